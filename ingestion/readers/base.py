"""What every reader returns, and the helpers the readers share.

A reader returns the document's whole text and the sections in it (heading path, page, and
the offsets of the section's body inside that text), so every chunk cut later can say where
it came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

from ingestion.errors import IngestError

# The package's name, not this module's: log lines say "ingestion.readers" as before the split.
logger = logging.getLogger(__package__)

SUPPORTED = "Supported formats are PDF, Word (.docx), HTML, Markdown and plain text."


@dataclass(frozen=True)
class Section:
    """A run of body text under one heading path (or on one PDF page)."""

    heading_path: tuple[str, ...]
    start: int  # offsets of the body inside Extracted.text
    end: int
    page: int | None = None


@dataclass
class Extracted:
    text: str
    sections: list[Section] = field(default_factory=list)
    title: str = ""  # "" when the file itself names none
    metadata: dict = field(default_factory=dict)  # e.g. Markdown front matter
    links: list[str] = field(default_factory=list)  # hrefs to other pages, as written


def damaged(reason: str, exc: BaseException) -> IngestError:
    """The IngestError for a file its parsing library failed on: `reason` for the person, `exc` as its cause.

    Damaged input makes the libraries fail in every way (pypdf, python-docx and zipfile raise
    KeyError, AttributeError, struct.error...), so that is expected, not a bug: the worker logs
    one warning line naming the cause (ingestion.processing); the traceback only at DEBUG,
    for whoever suspects a bug in the library or in kb.
    """
    if isinstance(exc, SoftTimeLimitExceeded):
        # Celery's soft time limit lands wherever the worker is, often inside a library's
        # `except Exception`: it stops the task and is no verdict on the file.
        raise exc
    logger.debug("%s (%s: %s)", reason, type(exc).__name__, exc, exc_info=exc)
    error = IngestError(reason)
    error.__cause__ = exc
    return error


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- shared helpers -------------------------------------------------------------------------


class _Outline:
    """The stack of open headings: entering a level closes every heading at or below it."""

    def __init__(self) -> None:
        self._open: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        self._open.append((level, title))

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._open if title)


class _TextBuilder:
    """Assembles a document's text from heading lines and bodies, keeping each body's offsets."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.sections: list[Section] = []

    def _append(self, text: str) -> int:
        if self._parts:
            self._parts.append("\n\n")
            self._length += 2
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        return start

    def heading(self, text: str) -> None:
        if text.strip():
            self._append(text.strip())

    def body(self, heading_path: tuple[str, ...], text: str, page: int | None = None) -> None:
        text = text.strip()
        if text:
            start = self._append(text)
            self.sections.append(Section(heading_path, start, start + len(text), page))

    def build(self, title: str = "") -> Extracted:
        return Extracted(text="".join(self._parts), sections=self.sections, title=title.strip())


def _stripped_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _one_line(text: str) -> str:
    return " ".join(text.split())
