"""Markdown: sections between headings, the title from front matter or the first H1."""

from __future__ import annotations

import re

from ingestion.readers.base import Extracted, Section, _one_line, _Outline, _stripped_span, logger

_FRONT_MATTER_MAX_CHARS = 100_000  # kept only when its JSON fits 20,000 characters anyway
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
    """Front matter as JSON-safe metadata ({} when it is not a YAML mapping, or not one worth keeping)."""
    import json

    import yaml

    if len(source) > _FRONT_MATTER_MAX_CHARS:
        return {}
    try:
        meta = yaml.safe_load(source)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date such as 2024-13-45
        logger.info("ignoring unparseable front matter (%s)", type(exc).__name__)
        return {}
    if not isinstance(meta, dict) or _too_many_nodes(meta):
        return {}
    try:
        # Dates and other YAML types become strings; keys too (YAML allows any).
        safe = json.loads(json.dumps({str(k): v for k, v in meta.items()}, default=str))
    except (ValueError, RecursionError) as exc:  # a structure referring to itself, an int of 5,000 digits
        logger.info("ignoring front matter that is not plain data (%s)", type(exc).__name__)
        return {}
    return safe if len(json.dumps(safe)) <= 20_000 else {}


def _too_many_nodes(value, budget: int = 10_000) -> bool:
    """True past `budget` values: YAML aliases let a few hundred bytes stand for a billion ("billion laughs")."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
    return False


def _front_matter_title(meta: dict) -> str:
    value = meta.get("title")
    return _one_line(str(value)) if isinstance(value, str | int | float) else ""
