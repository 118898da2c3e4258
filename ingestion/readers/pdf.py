"""PDF: one section per page, headings from the PDF's outline."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

from ingestion.errors import IngestError
from ingestion.readers.base import Extracted, _one_line, _TextBuilder, damaged, logger, normalize_newlines

_PAST_LIMITS = (
    "The PDF is too complex to read safely: it exceeds a limit of the PDF reader (a stream or table far "
    "larger than its file suggests, as in damaged or malicious files)."
)


def _damaged_reason(data: bytes) -> str:
    # A PDF ends with %%EOF (incremental updates append more, each with its own). A body of
    # objects without one near the end was cut short: in the download, the copy or the upload.
    if b"%%EOF" not in data[-2048:] and b"endobj" in data:
        return "The PDF is truncated (its end is missing), so it cannot be read; upload the complete file again."
    return "The PDF is damaged and cannot be read."


def read_pdf(data: bytes) -> Extracted:
    """One section per page (empty pages skipped); headings from the PDF's outline when it has one."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, LimitReachedError

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except LimitReachedError as exc:
        raise damaged(_PAST_LIMITS, exc) from exc
    except Exception as exc:  # noqa: BLE001 - pypdf fails on malformed input in many ways (ValueError, KeyError, struct.error...)
        raise damaged(_damaged_reason(data), exc) from exc
    if encrypted:
        try:
            # Many PDFs carry only an owner password (restricting printing or copying);
            # the empty user password opens those for reading.
            opened = reader.decrypt("")
        except DependencyError as exc:
            raise IngestError("The PDF is encrypted with a method this server cannot open.") from exc
        except Exception as exc:  # noqa: BLE001 - a damaged encryption dictionary
            reason = "The PDF is encrypted and its encryption data is damaged, so it cannot be read."
            raise damaged(reason, exc) from exc
        if not opened:
            raise IngestError("The PDF is encrypted (password-protected); upload a copy without a password.")

    try:
        pages = [_clean_pdf_text(page.extract_text() or "") for page in reader.pages]
    except LimitReachedError as exc:
        raise damaged(_PAST_LIMITS, exc) from exc
    except Exception as exc:  # noqa: BLE001 - as above: damaged streams fail inside pypdf in many ways
        raise damaged("The PDF is damaged: the text of its pages cannot be extracted.", exc) from exc
    if not pages:
        raise IngestError("The PDF has no pages; it may be damaged.")
    if not any(pages):
        raise IngestError(
            "The PDF has no text layer (it is probably scanned images); run it through OCR and upload the result."
        )

    paths = _outline_paths(reader, len(pages))
    builder = _TextBuilder()
    for number, text in enumerate(pages, start=1):
        builder.body(paths[number - 1], text, page=number)
    return builder.build(title=_pdf_title(reader))


def _clean_pdf_text(text: str) -> str:
    text = normalize_newlines(text).replace("\x00", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _pdf_title(reader) -> str:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # noqa: BLE001 - a broken info dictionary only costs the title
        return ""
    return _one_line(title) if isinstance(title, str) else ""


def _outline_paths(reader, page_count: int) -> list[tuple[str, ...]]:
    """For each page, the bookmark path in force on it (the last bookmark starting on or before it)."""
    entries: list[tuple[int, int, str]] = []  # (page index, depth, title)

    def collect(items: Iterable, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                collect(item, depth + 1)
                continue
            page = reader.get_destination_page_number(item)
            title = _one_line(str(getattr(item, "title", "") or ""))
            if page is not None and page >= 0 and title:
                entries.append((page, depth, title))

    try:
        collect(reader.outline, 0)
    except Exception as exc:  # noqa: BLE001 - a broken outline only costs headings, never the text
        logger.info("ignoring a broken PDF outline (%s: %s)", type(exc).__name__, exc)
        entries = []
    entries.sort(key=lambda e: e[0])  # stable: outline order within a page

    paths: list[tuple[str, ...]] = []
    stack: list[str] = []
    next_entry = 0
    for page in range(page_count):
        while next_entry < len(entries) and entries[next_entry][0] <= page:
            _, depth, title = entries[next_entry]
            stack = stack[:depth] + [title]
            next_entry += 1
        paths.append(tuple(stack))
    return paths
