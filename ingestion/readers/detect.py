"""Sniffing: deciding a file's format from its content first, its name second."""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path
from typing import Literal

from ingestion.errors import IngestError
from ingestion.readers.base import SUPPORTED, damaged

Kind = Literal["pdf", "docx", "html", "markdown", "text"]

MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".mkdn"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}

# Formats people upload by mistake, named so the message says what the file is.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old-style Office file (.doc/.xls/.ppt) or a password-protected Office file",
    ),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"{\\rtf", "an RTF document"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"MZ", "a Windows program"),
)

# A ZIP whose file list cannot be read, by what the name says it is.
_ZIP_DAMAGED = {
    ".zip": "The ZIP archive is damaged (its list of files cannot be read), so nothing in it can be unpacked; "
    "create the archive again and upload it.",
    ".docx": "The Word document is damaged: it could not be opened as a .docx file (it is a damaged ZIP "
    "package). Open it in Word (or LibreOffice), save it again as .docx, and upload the copy.",
    "": "The file looks like a ZIP-based document (a ZIP archive, or a Word or other Office file) but is "
    "damaged, so it cannot be read.",
}


def sniff(data: bytes, name: str) -> Kind:
    """Decide the format from the content first, the file name second."""
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise IngestError("The file is empty.")
    # The PDF spec lets the header sit anywhere in the first 1024 bytes.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return _sniff_zip(data, suffix)
    if suffix == ".pdf":
        raise IngestError(
            "The file is named .pdf but is not a PDF (it has no PDF header); it may be damaged or mislabelled."
        )
    if suffix == ".docx":
        raise IngestError("The file is named .docx but is not a Word document; it may be damaged or mislabelled.")
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise IngestError(f"This file is {what}, which cannot be read. {SUPPORTED}")
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    head = data[:1024].lstrip(codecs.BOM_UTF8 + b" \t\r\n").lower()
    if suffix in HTML_SUFFIXES or head.startswith(b"<!doctype html") or b"<html" in head:
        return "html"
    return "text"


def _sniff_zip(data: bytes, suffix: str) -> Kind:
    from ingestion.archives import ZIP_DAMAGE, check_container, limits_from_settings

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            # Before python-docx unpacks anything: a DOCX is a ZIP and can be a bomb too.
            check_container(archive, limits_from_settings(), what="The file")
    except ZIP_DAMAGE as exc:
        raise damaged(_ZIP_DAMAGED.get(suffix, _ZIP_DAMAGED[""]), exc) from exc
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names or "ppt/presentation.xml" in names:
        raise IngestError(f"Excel and PowerPoint files cannot be read. {SUPPORTED}")
    raise IngestError(f"This is a ZIP archive, not a document. {SUPPORTED}")
