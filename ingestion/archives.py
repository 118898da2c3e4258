"""ZIP files: the limits every archive (and every DOCX, itself a ZIP) must respect before
anything is unpacked, and the pages of a wiki export inside an archive.

Written on the standard library's zipfile: it reads members lazily and never writes to
disk, so the checks below run on the central directory alone. zipfile also stops reading a
member at its declared size, so a bomb cannot outgrow what the directory declared.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

from ingestion.errors import IngestError

# What zipfile raises on a damaged archive besides BadZipFile: offsets pointing outside the
# file (ValueError, OSError, struct.error), a name not valid in its declared encoding
# (UnicodeDecodeError, a ValueError), data cut short (EOFError), damaged compressed data
# (zlib.error), a compression method or feature it does not know (NotImplementedError).
ZIP_DAMAGE = (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, struct.error, zlib.error)

# Members smaller than this may compress as well as they like: a page of repeated markup
# honestly compresses 50:1. Above it, a ratio past the limit is a decompression bomb.
RATIO_FLOOR = 1 << 20

PAGE_SUFFIXES = {
    ".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".html", ".htm", ".xhtml", ".txt", ".text", ".pdf", ".docx",
}  # fmt: skip
# Folders and files that archivers and editors add, never pages.
_NOISE = re.compile(r"(^|/)(__MACOSX|\.[^/]*)(/|$)")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int
    max_member_bytes: int
    max_ratio: int


def limits_from_settings() -> Limits:
    from django.conf import settings

    return Limits(
        max_members=settings.KB_ARCHIVE_MAX_MEMBERS,
        max_total_bytes=settings.KB_ARCHIVE_MAX_TOTAL_MB * 1024 * 1024,
        max_member_bytes=settings.KB_MAX_UPLOAD_MB * 1024 * 1024,
        max_ratio=settings.KB_ARCHIVE_MAX_RATIO,
    )


def check_container(archive: zipfile.ZipFile, limits: Limits, *, what: str = "The archive") -> None:
    """IngestError if unpacking would cost too much: too many members, too many bytes, or a bomb."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise IngestError(
            f"{what} holds {len(infos):,} files; the limit is {limits.max_members:,} (KB_ARCHIVE_MAX_MEMBERS)."
        )
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise IngestError(
            f"{what} would unpack to {total / 2**20:,.0f} MB; the limit is "
            f"{limits.max_total_bytes / 2**20:,.0f} MB (KB_ARCHIVE_MAX_TOTAL_MB)."
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > limits.max_ratio:
            raise IngestError(
                f"{what} is a decompression bomb: {info.filename} expands {ratio:,.0f} times "
                f"(the limit is {limits.max_ratio}, KB_ARCHIVE_MAX_RATIO)."
            )


def is_document_package(archive: zipfile.ZipFile) -> bool:
    """True for Office Open XML files (DOCX, XLSX, PPTX): ZIPs that are one document, not a tree of pages."""
    names = set(archive.namelist())
    return "[Content_Types].xml" in names or "word/document.xml" in names


def _clean_parts(name: str) -> list[str] | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return None if not parts or ".." in parts else parts


def clean_member_path(name: str) -> str | None:
    """The member's path as a source path, or None if it is absolute or climbs out with '..'."""
    if name.replace("\\", "/").startswith("/") or _DRIVE.match(name):
        return None
    parts = _clean_parts(name)
    return None if parts is None else "/".join(parts)


def clean_upload_path(name: str) -> str | None:
    """An uploaded file's name (or its path in an uploaded folder) as a source path; None if unusable.

    Browsers send folder paths relative, so a leading '/' is dropped rather than refused;
    '..' is refused. Never a path on disk: stored files get generated names.
    """
    parts = _clean_parts(name)
    return None if parts is None else "/".join(parts)[:1000]


def is_page_archive(file) -> bool:
    """A ZIP that is a tree of pages (a wiki export), told by content from an open file.

    Office files are ZIPs too, but one document each; a damaged ZIP is left to the reader,
    which names the damage on the document.
    """
    file.seek(0)
    head = file.read(4)
    file.seek(0)
    if head != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return not is_document_package(archive)
    except ZIP_DAMAGE:
        return False
    finally:
        file.seek(0)


def copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, into) -> None:
    """Copy one member's bytes into an open file; IngestError saying what is wrong when they cannot be read."""
    try:
        with archive.open(info) as source:
            shutil.copyfileobj(source, into, 1 << 20)
    except RuntimeError as exc:  # zipfile's word for "encrypted, and no password given"
        raise IngestError("Refused: the file is encrypted inside the archive.") from exc
    except NotImplementedError as exc:
        raise IngestError(f"Stored in the archive with a compression method that cannot be read ({exc}).") from exc
    except ZIP_DAMAGE as exc:
        raise IngestError(
            "Damaged inside the archive: its data cannot be unpacked (the archive is corrupted or cut short)."
        ) from exc


@dataclass
class Member:
    path: str  # the page's path inside the archive: its source path
    info: zipfile.ZipInfo


@dataclass
class Pages:
    members: list[Member] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)
    ignored: int = 0  # attachments, images and other files that are not pages
    listed: set[str] = field(default_factory=set)  # every page path present, refused ones included


def pages(archive: zipfile.ZipFile, limits: Limits) -> Pages:
    """The pages of a wiki export, each checked on its own: one bad member never stops the rest."""
    check_container(archive, limits)
    found = Pages()
    for info in archive.infolist():
        if info.is_dir():
            continue
        path = clean_member_path(info.filename)
        if path is None:
            found.refused.append((info.filename, "Refused: the path is absolute or climbs out of the archive (..)."))
            continue
        if _NOISE.search(path):
            continue
        if posixpath.splitext(path)[1].lower() not in PAGE_SUFFIXES:
            found.ignored += 1
            continue
        found.listed.add(path)
        if info.flag_bits & 0x1:
            found.refused.append((path, "Refused: the file is encrypted inside the archive."))
        elif stat.S_ISLNK(info.external_attr >> 16):
            # kb reads members as bytes and never follows a link; refused all the same, so a page
            # is never the text of a path, and nothing that unpacks to disk later can be pointed outside.
            found.refused.append((path, "Refused: the file is a symbolic link."))
        elif info.file_size == 0:
            found.refused.append((path, "The file is empty."))
        elif info.file_size > limits.max_member_bytes:
            found.refused.append(
                (path, f"The file is {info.file_size / 2**20:.1f} MB; the limit is "
                       f"{limits.max_member_bytes / 2**20:.0f} MB (KB_MAX_UPLOAD_MB).")
            )  # fmt: skip
        else:
            found.members.append(Member(path, info))
    return found
