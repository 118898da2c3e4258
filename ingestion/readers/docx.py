"""Word (.docx): paragraphs and tables in order, Heading N styles giving the hierarchy."""

from __future__ import annotations

import io
import re

from ingestion.readers.base import Extracted, _one_line, _Outline, _TextBuilder, damaged

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)
_NOT_OPENED = (
    "The Word document is damaged: it could not be opened as a .docx file. Open it in Word (or LibreOffice), "
    "save it again as .docx, and upload the copy."
)


def read_docx(data: bytes) -> Extracted:
    """Paragraphs and tables in order; Heading N styles give the hierarchy, list items keep a bullet."""
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - see below
        # python-docx trusts the package's structure: a wrong [Content_Types].xml, a missing
        # part or relationship, bad XML or a damaged ZIP member surface as AttributeError,
        # KeyError, ValueError, XMLSyntaxError, zlib.error... all of them the file's fault.
        raise damaged(_NOT_OPENED, exc) from exc
    try:
        return _walk(document)
    except Exception as exc:  # noqa: BLE001 - python-docx parses lazily: the same failures, one step later
        # (A bug of kb's in _walk would fail every Word file alike, which tests/ingestion/test_readers.py sees.)
        raise damaged("The Word document is damaged: its content could not be read.", exc) from exc


def _walk(document) -> Extracted:
    from docx.table import Table

    builder = _TextBuilder()
    outline = _Outline()
    paragraphs: list[str] = []
    previous_was_list = False
    title = _one_line(document.core_properties.title or "")
    first_h1 = ""

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = [_table_row(row) for row in block.rows]
            text = "\n".join(row for row in rows if row)
            if text:
                paragraphs.append(text)
            previous_was_list = False
            continue
        text = block.text.strip()
        if not text:
            continue
        style = _style_names(block.style)
        level = next((int(m.group(1)) for m in map(_HEADING_STYLE.match, style) if m), None)
        if level is not None or "Title" in style:
            builder.body(outline.path, "\n\n".join(paragraphs))
            paragraphs = []
            builder.heading(text)
            if level is None:  # the Title style names the document, above every heading
                title = title or _one_line(text)
            else:
                outline.enter(level, _one_line(text))
                if level == 1 and not first_h1:
                    first_h1 = _one_line(text)
            previous_was_list = False
            continue
        numbered = block._p.pPr is not None and block._p.pPr.numPr is not None
        is_list = numbered or any(name.startswith("List") for name in style)
        if is_list:
            text = f"- {text}"
            if previous_was_list and paragraphs:
                paragraphs[-1] += "\n" + text  # one list, one paragraph
                continue
        paragraphs.append(text)
        previous_was_list = is_list
    builder.body(outline.path, "\n\n".join(paragraphs))
    return builder.build(title=title or first_h1)


def _style_names(style) -> list[str]:
    """The paragraph's style and the styles it is based on (custom heading styles inherit Heading N)."""
    names: list[str] = []
    while style is not None and len(names) < 10:
        if style.name:
            names.append(style.name)
        style = style.base_style
    return names


def _table_row(row) -> str:
    cells: list[str] = []
    for cell in row.cells:
        text = _one_line(cell.text)
        if text and (not cells or cells[-1] != text):  # merged cells repeat their text
            cells.append(text)
    return " | ".join(cells)
