"""HTML: the main content of a page, its headings kept as structure."""

from __future__ import annotations

import re

from ingestion.readers.base import Extracted, _one_line, _Outline, _TextBuilder, damaged

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
    try:
        return _read_html(text)
    except RecursionError as exc:  # the walker below, and parts of BeautifulSoup, recurse into the tree
        raise damaged(
            "The HTML page is nested too deeply to read (elements inside elements, about a thousand levels deep); "
            "it may be damaged or machine-generated.",
            exc,
        ) from exc


def _read_html(text: str) -> Extracted:
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
