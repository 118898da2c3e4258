"""Cut sections into chunks that fit a token budget, keeping each chunk's place in the text.

Structure comes first (a reader's sections: headings, PDF pages); a section longer than the
budget is split by llama-index's SentenceSplitter, measuring with the embedding model's own
tokenizer so a chunk's size is what the model will see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingestion.readers import Extracted, Section

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class Span:
    """One chunk: its text, its offsets in the document's text, and the section it came from."""

    text: str
    start: int
    end: int
    section: Section


def split_sections(extracted: Extracted, *, tokenizer: Tokenizer, chunk_tokens: int, overlap: int) -> list[Span]:
    """Chunks of at most `chunk_tokens` word pieces (special tokens not counted), in document order."""
    from llama_index.core.node_parser import SentenceSplitter

    def pieces(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    overlap = min(overlap, chunk_tokens // 2)
    splitter = SentenceSplitter(
        chunk_size=chunk_tokens,
        chunk_overlap=overlap,
        tokenizer=pieces,
        paragraph_separator="\n\n",  # the readers separate paragraphs with one blank line
    )
    spans: list[Span] = []
    for section in extracted.sections:
        region = extracted.text[section.start : section.end]
        if not region.strip():
            continue
        if len(pieces(region)) <= chunk_tokens:
            spans.append(Span(region, section.start, section.end, section))
            continue
        previous: tuple[int, int] | None = None
        split = splitter.split_text(region)
        for n, piece in enumerate(split):
            if n == len(split) - 1 and region.endswith(piece):
                located = (len(region) - len(piece), len(region))  # the last chunk ends where the section does
            else:
                located = _locate_after(region, piece, previous, overlap, tokenizer)
            if located is None:
                # Not found even approximately: keep the splitter's text, point at the whole section.
                spans.extend(_fit(piece, section.start, section.end, section, chunk_tokens, pieces, tokenizer))
                continue
            start, end = located
            previous = located
            text = region[start:end]
            spans.extend(
                _fit(text, section.start + start, section.start + end, section, chunk_tokens, pieces, tokenizer)
            )
    return spans


def _locate_after(
    region: str, piece: str, previous: tuple[int, int] | None, overlap: int, tokenizer: Tokenizer
) -> tuple[int, int] | None:
    """Where the next chunk lies, given where the previous one did.

    It repeats at most `overlap` word pieces of the previous chunk, so search from there.
    Searching from just after the previous start (as llama-index's own node parser does)
    goes wrong on repetitive text, where the chunk's text also occurs earlier: chunks then
    pile up on the same lines and the end of the section is lost.
    """
    if previous is None:
        return _locate(region, piece, 0)
    start, end = previous
    offsets = tokenizer.encode(region[start:end], add_special_tokens=False).offsets
    # slack on the second try: word pieces are not quite additive across the splitter's joins
    for keep in (overlap, overlap + 2):
        if keep == 0:
            bound = end
        elif keep < len(offsets):
            bound = start + offsets[len(offsets) - keep][0]
        else:
            break
        located = _locate(region, piece, bound)
        if located is not None:
            return located
    return _locate(region, piece, start + 1)


def _locate(region: str, piece: str, cursor: int) -> tuple[int, int] | None:
    """Where the splitter's chunk lies in the region.

    SentenceSplitter returns text, not offsets. Its chunks are stripped concatenations of
    the region's own characters, so an exact find almost always works; its sub-sentence
    regex can drop a stray punctuation mark, so fall back to matching the chunk's ends.
    """
    at = region.find(piece, cursor)
    if at >= 0:
        return at, at + len(piece)
    head, tail = piece[:32], piece[-32:]
    start = region.find(head, cursor)
    if start < 0:
        return None
    tail_at = region.find(tail, start + max(len(piece) - len(tail), 0))
    if tail_at < 0:
        return None
    return start, tail_at + len(tail)


def _fit(
    text: str,
    start: int,
    end: int,
    section: Section,
    budget: int,
    pieces: Callable[[str], list[int]],
    tokenizer: Tokenizer,
) -> list[Span]:
    """The chunk itself if it fits; else windows cut at word-piece boundaries.

    Word pieces are not additive across joins (the splitter sums the sizes of its parts),
    so a merged chunk can come out a few pieces over budget; this keeps the guarantee.
    """
    if len(pieces(text)) <= budget:
        return [Span(text, start, end, section)]
    offsets_known = end - start == len(text)  # else not a slice of the document: spans point at the section
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    spans: list[Span] = []
    first = 0
    while first < len(offsets):
        last = min(first + budget, len(offsets))
        while True:
            a, b = offsets[first][0], offsets[last - 1][1]
            if len(pieces(text[a:b])) <= budget or last - first == 1:
                break
            last -= max(1, (last - first) // 20)
        piece = text[a:b]
        if piece.strip():
            where = (start + a, start + b) if offsets_known else (start, end)
            spans.append(Span(piece, *where, section))
        first = last
    return spans
