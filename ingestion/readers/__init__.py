"""One reader per format: a file's bytes in, its text and sections out.

A reader returns the document's whole text and the sections in it (heading path, page, and
the offsets of the section's body inside that text), so every chunk cut later can say where
it came from. Anything wrong with the input becomes an IngestError a person can act on.

The package holds one module per format (pdf, docx, html, markdown, text), format sniffing
(detect) and the shared types and helpers (base); `read` below picks the reader for a file.
"""

from __future__ import annotations

from pathlib import Path

from ingestion.readers.base import SUPPORTED, Extracted, Section, logger, normalize_newlines
from ingestion.readers.deadline import read_timeout, time_limit
from ingestion.readers.detect import HTML_SUFFIXES, MARKDOWN_SUFFIXES, Kind, sniff
from ingestion.readers.docx import read_docx
from ingestion.readers.html import read_html
from ingestion.readers.markdown import read_markdown
from ingestion.readers.pdf import read_pdf
from ingestion.readers.text import decode_text, read_text

__all__ = [
    "HTML_SUFFIXES",
    "MARKDOWN_SUFFIXES",
    "SUPPORTED",
    "Extracted",
    "Kind",
    "Section",
    "decode_text",
    "logger",
    "normalize_newlines",
    "read",
    "read_bytes",
    "read_docx",
    "read_html",
    "read_markdown",
    "read_pdf",
    "read_text",
    "sniff",
]


def read(path: Path, *, name: str) -> Extracted:
    """Read any supported file; `name` is the name the person gave it (its suffix is a hint).

    Anything wrong with the file, damage and unsupported content included, is an IngestError
    whose text is the reason to show on the document; reading longer than KB_READ_TIMEOUT is one.
    """
    return read_bytes(path.read_bytes(), name=name)


def read_bytes(data: bytes, *, name: str, timeout: float | None = None) -> Extracted:
    """read() on bytes; `timeout` in seconds replaces KB_READ_TIMEOUT (0: no limit)."""
    with time_limit(read_timeout() if timeout is None else timeout):
        kind = sniff(data, name)
        if kind == "pdf":
            return read_pdf(data)
        if kind == "docx":
            return read_docx(data)
        text = decode_text(data)
        if kind == "html":
            return read_html(text)
        if kind == "markdown":
            return read_markdown(text)
        return read_text(text)
