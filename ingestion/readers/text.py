"""Plain text, and decoding bytes to text for every text-based format (plain text, Markdown, HTML)."""

from __future__ import annotations

import codecs
import re

from ingestion.errors import IngestError
from ingestion.readers.base import SUPPORTED, Extracted, Section, _stripped_span, normalize_newlines

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # C0 and C1 controls but tab, newlines, form feed
_NON_ASCII = re.compile("[^\x00-\x7f]")
_TYPOGRAPHY = set("\u00a0–—‘’‚“”„…•·€£¥©®™°±×÷§¶«»¿¡")
_NOT_TEXT = "This file does not contain text (it looks like binary data). " + SUPPORTED
_UNKNOWN_ENCODING = (
    "The file is not UTF-8 text and its encoding could not be recognised; save it as UTF-8 and upload it again."
)


def decode_text(data: bytes) -> str:
    """Bytes to text with newlines normalised; IngestError if the bytes are not text.

    Order: a BOM (UTF-8/16/32), strict UTF-8, then Windows-1252 only when the result is
    clearly text (mostly ASCII, the rest letters and typographic marks). No statistical
    charset detection: charset-normalizer, tried here, read short cp1252 French as cp1257
    ("déją vu") or UTF-16, and labelled random bytes cp949 with full confidence. A wrong
    guess stores mojibake that search then indexes; asking for UTF-8 is the better answer.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding))
            except UnicodeDecodeError as exc:
                raise IngestError(_UNKNOWN_ENCODING) from exc
    if b"\x00" in data:
        raise IngestError(_NOT_TEXT)
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:  # bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D)
        raise IngestError(_UNKNOWN_ENCODING) from exc
    if not _mostly_latin(text):
        raise IngestError(_UNKNOWN_ENCODING)
    return _checked(text)


def _checked(text: str) -> str:
    text = normalize_newlines(text)
    controls = len(_CONTROLS.findall(text))
    if controls > max(2, len(text) // 100):
        raise IngestError(_NOT_TEXT)
    if not text.strip():
        raise IngestError("The file is empty.")
    return text


def _mostly_latin(text: str) -> bool:
    non_ascii = _NON_ASCII.findall(text)
    if len(non_ascii) > 0.3 * len(text):
        return False
    wordlike = sum(1 for c in non_ascii if c.isalpha() or c in _TYPOGRAPHY)
    return wordlike >= 0.8 * len(non_ascii)


def read_text(text: str) -> Extracted:
    start, end = _stripped_span(text, 0, len(text))
    return Extracted(text=text, sections=[Section((), start, end)] if end > start else [])
