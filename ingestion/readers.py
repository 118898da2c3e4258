"""One reader per format: a file's bytes in, its text and sections out.

A reader returns the document's whole text and the sections in it (heading path, page, and
the offsets of the section's body inside that text), so every chunk cut later can say where
it came from. Anything wrong with the input becomes an IngestError a person can act on.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ingestion.errors import IngestError

logger = logging.getLogger(__name__)

Kind = Literal["pdf", "docx", "html", "markdown", "text"]

SUPPORTED = "Supported formats are PDF, Word (.docx), HTML, Markdown and plain text."
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


# -- type sniffing and decoding ------------------------------------------------------------


def sniff(data: bytes, name: str) -> Kind:
    """Decide the format from the content first, the file name second."""
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise IngestError("The file is empty.")
    # The PDF spec lets the header sit anywhere in the first 1024 bytes.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return _sniff_zip(data)
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


def _sniff_zip(data: bytes) -> Kind:
    from ingestion.archives import check_container, limits_from_settings

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            # Before python-docx unpacks anything: a DOCX is a ZIP and can be a bomb too.
            check_container(archive, limits_from_settings(), what="The file")
    except zipfile.BadZipFile as exc:
        raise IngestError("The file looks like a ZIP-based document but is damaged.") from exc
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names or "ppt/presentation.xml" in names:
        raise IngestError(f"Excel and PowerPoint files cannot be read. {SUPPORTED}")
    raise IngestError(f"This is a ZIP archive, not a document. {SUPPORTED}")


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


# -- plain text and Markdown ------------------------------------------------------------------


def read_text(text: str) -> Extracted:
    start, end = _stripped_span(text, 0, len(text))
    return Extracted(text=text, sections=[Section((), start, end)] if end > start else [])


# Written by hand rather than with mdit-py-plugins' front_matter: one anchored regex is the
# whole job, and the plugin is not a dependency. "..." may close YAML front matter too.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?P<yaml>.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def read_markdown(text: str) -> Extracted:
    """Sections between top-level headings; the text is the Markdown source without front matter."""
    from markdown_it import MarkdownIt

    title = ""
    metadata: dict = {}
    match = _FRONT_MATTER.match(text)
    if match:
        metadata = _front_matter(match.group("yaml") or "")
        title = _front_matter_title(metadata)
        text = text[match.end() :]

    tokens = MarkdownIt("commonmark").parse(text)
    line_starts = [0]
    for m in re.finditer("\n", text):
        line_starts.append(m.end())
    line_starts.append(len(text))

    def offset(line: int) -> int:
        return line_starts[min(line, len(line_starts) - 1)]

    # (level, title, first line of the heading, first line after it)
    headings: list[tuple[int, str, int, int]] = []
    for i, token in enumerate(tokens):
        # level 0 only: a "# " inside a list or quote is content, not document structure
        if token.type == "heading_open" and token.level == 0 and token.map:
            inline = tokens[i + 1]
            name = _one_line("".join(c.content for c in inline.children or () if c.type in ("text", "code_inline")))
            headings.append((int(token.tag[1]), name, token.map[0], token.map[1]))

    sections: list[Section] = []
    outline = _Outline()

    def add(path: tuple[str, ...], start: int, end: int) -> None:
        start, end = _stripped_span(text, start, end)
        if end > start:
            sections.append(Section(path, start, end))

    add((), 0, offset(headings[0][2]) if headings else len(text))
    for n, (level, name, _first, after) in enumerate(headings):
        outline.enter(level, name)
        body_end = offset(headings[n + 1][2]) if n + 1 < len(headings) else len(text)
        add(outline.path, offset(after), body_end)

    if not title:
        title = next((name for level, name, _, _ in headings if level == 1 and name), "")
    links = [
        href
        for token in tokens
        for child in token.children or ()
        if child.type == "link_open" and isinstance(href := child.attrs.get("href"), str)
    ]
    return Extracted(text=text, sections=sections, title=title, metadata=metadata, links=links)


def _front_matter(source: str) -> dict:
    """Front matter as JSON-safe metadata ({} when it is not a YAML mapping)."""
    import json

    import yaml

    try:
        meta = yaml.safe_load(source)
    except yaml.YAMLError:
        logger.info("ignoring unparseable front matter")
        return {}
    if not isinstance(meta, dict):
        return {}
    # Dates and other YAML types become strings; keys too (YAML allows any).
    safe = json.loads(json.dumps({str(k): v for k, v in meta.items()}, default=str))
    return safe if len(json.dumps(safe)) <= 20_000 else {}


def _front_matter_title(meta: dict) -> str:
    value = meta.get("title")
    return _one_line(str(value)) if isinstance(value, str | int | float) else ""


# -- HTML --------------------------------------------------------------------------------------

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_DROP_ALWAYS = (
    "script", "style", "noscript", "template", "nav", "aside", "svg", "iframe", "canvas",
    "object", "embed", "button", "select", "input", "textarea", "dialog", "head",
)  # fmt: skip
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "ul", "ol", "li", "dl", "dt", "dd",
    "pre", "blockquote", "table", "thead", "tbody", "tfoot", "tr", "caption", "figure", "figcaption",
    "address", "details", "summary", "hr", "form", "fieldset", "center",
}  # fmt: skip


def read_html(text: str) -> Extracted:
    """The main content of a page, its headings kept as structure."""
    import warnings

    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        # XHTML pages (DocBook and MkDocs exports) parse well as HTML; bs4 warns on every one.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(text, "lxml")
    page_title = _one_line(soup.title.get_text()) if soup.title else ""
    articles = soup.find_all("article")
    root = soup.find("main") or soup.find(attrs={"role": "main"}) or (articles[0] if len(articles) == 1 else None)
    for tag in soup.find_all(_DROP_ALWAYS):
        tag.decompose()
    for tag in soup.find_all(lambda t: t.has_attr("hidden") or t.get("aria-hidden") == "true"):
        tag.decompose()
    # Permalink marks that doc generators put into headings (Sphinx's "¶", MkDocs' and
    # VuePress's "#"): not content, and they would show in every breadcrumb.
    for tag in soup.select("a.headerlink, a.header-anchor, a.anchorjs-link"):
        tag.decompose()
    if root is None:
        root = soup.body or soup
        # Without a marked main region, page headers and footers are site chrome. Inside
        # <main>/<article> a <header> holds the content's own title, so it stays there.
        for tag in root.find_all(["header", "footer"]):
            tag.decompose()
    else:
        for tag in root.find_all("footer"):
            tag.decompose()

    links = [a["href"] for a in root.find_all("a", href=True) if isinstance(a["href"], str)]
    walker = _HtmlWalker()
    walker.walk(root)
    extracted = walker.finish()
    extracted.links = links
    h1 = next((t for t in (_one_line(h.get_text(" ")) for h in root.find_all("h1")) if t), "")
    extracted.title = h1 or page_title
    return extracted


class _HtmlWalker:
    """Turns the DOM into paragraphs under headings.

    Written here because BeautifulSoup's get_text() flattens headings and blocks into one
    string, and the structure is the point; readers such as llama-index's HTMLTagReader
    return tag text without the heading hierarchy.
    """

    def __init__(self) -> None:
        self.builder = _TextBuilder()
        self.outline = _Outline()
        self.paragraphs: list[str] = []
        self.buffer: list[str] = []

    def walk(self, node, *, pre: bool = False) -> None:
        from bs4 import NavigableString, Tag
        from bs4.element import PreformattedString

        for child in node.children:
            if isinstance(child, PreformattedString):  # comments, CDATA, doctype, processing instructions
                continue
            if isinstance(child, NavigableString):
                self.buffer.append(str(child) if pre else re.sub(r"\s+", " ", str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _HEADINGS:
                self.end_paragraph()
                self.end_section()
                heading = _one_line(child.get_text(" "))
                if heading:
                    self.builder.heading(heading)
                    self.outline.enter(int(name[1]), heading)
            elif name == "br":
                self.buffer.append("\n")
            elif name == "pre":
                self.end_paragraph()
                self.walk(child, pre=True)
                self.end_paragraph(pre=True)
            elif name in ("td", "th"):
                if "".join(self.buffer).strip():
                    self.buffer.append(" | ")
                self.walk(child, pre=pre)
            elif name in _BLOCKS:
                self.end_paragraph()
                if name == "li":
                    self.buffer.append("- ")
                self.walk(child, pre=pre)
                self.end_paragraph()
            else:
                self.walk(child, pre=pre)

    def end_paragraph(self, *, pre: bool = False) -> None:
        text = "".join(self.buffer)
        self.buffer = []
        if pre:
            text = text.strip("\n").rstrip()
        else:
            text = "\n".join(" ".join(line.split()) for line in text.split("\n")).strip()
        if text and text != "-":
            self.paragraphs.append(text)

    def end_section(self) -> None:
        self.builder.body(self.outline.path, "\n\n".join(self.paragraphs))
        self.paragraphs = []

    def finish(self) -> Extracted:
        self.end_paragraph()
        self.end_section()
        return self.builder.build()


# -- PDF ---------------------------------------------------------------------------------------


def read_pdf(data: bytes) -> Extracted:
    """One section per page (empty pages skipped); headings from the PDF's outline when it has one."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001 - pypdf fails on malformed input in many ways (ValueError, KeyError, struct.error...)
        logger.info("pypdf could not open a PDF", exc_info=True)
        raise IngestError("The PDF is damaged and cannot be read.") from exc
    if encrypted:
        try:
            # Many PDFs carry only an owner password (restricting printing or copying);
            # the empty user password opens those for reading.
            opened = reader.decrypt("")
        except DependencyError as exc:
            raise IngestError("The PDF is encrypted with a method this server cannot open.") from exc
        if not opened:
            raise IngestError("The PDF is encrypted (password-protected); upload a copy without a password.")

    try:
        pages = [_clean_pdf_text(page.extract_text() or "") for page in reader.pages]
    except Exception as exc:  # noqa: BLE001 - as above: damaged streams fail inside pypdf in many ways
        logger.info("pypdf could not extract text", exc_info=True)
        raise IngestError("The PDF is damaged and its text cannot be extracted.") from exc
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
    except Exception:  # noqa: BLE001 - a broken outline only costs headings, never the text
        logger.info("ignoring a broken PDF outline", exc_info=True)
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


# -- DOCX --------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def read_docx(data: bytes) -> Extracted:
    """Paragraphs and tables in order; Heading N styles give the hierarchy, list items keep a bullet."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import XMLSyntaxError

    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(document.iter_inner_content())
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, XMLSyntaxError) as exc:
        logger.info("python-docx could not open a document", exc_info=True)
        raise IngestError("The Word document is damaged and cannot be read.") from exc

    builder = _TextBuilder()
    outline = _Outline()
    paragraphs: list[str] = []
    previous_was_list = False
    title = _one_line(document.core_properties.title or "")
    first_h1 = ""

    for block in blocks:
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


# -- dispatch ----------------------------------------------------------------------------------


def read(path: Path, *, name: str) -> Extracted:
    """Read any supported file; `name` is the name the person gave it (its suffix is a hint)."""
    data = path.read_bytes()
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
