"""From an uploaded file to chunks ready to embed, and from texts to vectors.

The one place that composes the readers, the llama-index splitter and the embedding model;
kb's services call only what is defined here.
"""

from __future__ import annotations

import logging
import pathlib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from ingestion import chunking, readers
from ingestion.embeddings import Embedder, count_tokens, get_embedder

logger = logging.getLogger(__name__)

# Word pieces always left for the title and heading path, even when KB_CHUNK_TOKENS is set
# so high that chunk text alone would fill the model's window.
PREFIX_RESERVE = 24
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]


@dataclass
class ChunkData:
    text: str  # the chunk's own text (shown in citations)
    heading_path: str  # e.g. "Backups > Schedule" ("" if none)
    page: int | None  # 1-based page for PDFs, else None
    start_char: int | None  # offsets of the chunk inside ParsedDocument.text
    end_char: int | None


@dataclass
class ParsedDocument:
    title: str  # from front matter / first H1 / <title> / PDF metadata / else file stem
    text: str  # the whole extracted text
    chunks: list[ChunkData]
    metadata: dict = field(default_factory=dict)  # {"front_matter": {...}, "links": ["other/page.md", ...]}


def chunk_budget(embedder: Embedder) -> tuple[int, int]:
    """(chunk size, overlap) in word pieces: KB_CHUNK_TOKENS/OVERLAP, capped to leave room for the prefix."""
    from django.conf import settings

    size = max(8, min(settings.KB_CHUNK_TOKENS, embedder.max_tokens - _SPECIAL_TOKENS - PREFIX_RESERVE))
    overlap = max(0, min(settings.KB_CHUNK_OVERLAP, size // 4))
    return size, overlap


def parse_and_chunk(path: pathlib.Path, *, source_path: str, embedder: Embedder | None = None) -> ParsedDocument:
    """Read a file of any supported format and cut it into chunks that fit the embedding model.

    The type comes from the content (the name's suffix only tells Markdown from plain
    text, and a .pdf/.docx name whose content disagrees is refused). Raises IngestError
    with a reason a person can act on.
    """
    embedder = embedder or get_embedder()
    name = source_path or path.name
    extracted = readers.read(path, name=name)
    size, overlap = chunk_budget(embedder)
    spans = chunking.split_sections(extracted, tokenizer=embedder.tokenizer, chunk_tokens=size, overlap=overlap)
    chunks = [
        ChunkData(
            text=span.text,
            heading_path=" > ".join(span.section.heading_path),
            page=span.section.page,
            start_char=span.start,
            end_char=span.end,
        )
        for span in spans
    ]
    title = extracted.title or pathlib.PurePath(name).stem
    metadata: dict = {}
    if extracted.metadata:
        metadata["front_matter"] = extracted.metadata
    links = internal_links(extracted.links, source_path=name)
    if links:
        metadata["links"] = links
    return ParsedDocument(title=title, text=extracted.text, chunks=chunks, metadata=metadata)


MAX_LINKS = 500


def internal_links(hrefs: list[str], *, source_path: str) -> list[str]:
    """Relative links as source paths of the same tree (e.g. "ops/restore.md"), in order, once each."""
    folder = posixpath.dirname(source_path)
    found: dict[str, None] = {}
    for href in hrefs:
        href = href.strip().split("#", 1)[0].split("?", 1)[0]
        if not href or ":" in href or href.startswith(("/", "//")):
            continue  # an anchor on the same page, a URL with a scheme, or a site-absolute path
        target = posixpath.normpath(posixpath.join(folder, href))
        if target.startswith("..") or target == ".":
            continue
        found.setdefault(target, None)
        if len(found) >= MAX_LINKS:
            break
    return list(found)


def embedding_text(*, title: str, heading_path: str, text: str, embedder: Embedder | None = None) -> str:
    """The text to embed: title and heading path, then the chunk, so "Run it nightly" keeps its context.

    The whole must fit the model's window; when it would not, the prefix is shortened (the
    innermost heading is kept longest), never the text.
    """
    embedder = embedder or get_embedder()
    title = " ".join(title.split())
    headings = [h.strip() for h in heading_path.split(" > ") if h.strip()]
    if title and headings and headings[0].casefold() == title.casefold():
        headings = headings[1:]  # a first H1 that is the title would otherwise appear twice
    parts = [p for p in (title, *headings) if p]
    if not parts:
        return text
    for prefix in _shorter_prefixes(parts, embedder):
        candidate = f"{prefix}\n\n{text}"
        if count_tokens(candidate, embedder=embedder) <= embedder.max_tokens:
            return candidate
    return text


def _shorter_prefixes(parts: list[str], embedder: Embedder):
    yield " > ".join(parts)
    if len(parts) > 2:
        yield f"{parts[0]} > ... > {parts[-1]}"
    if len(parts) > 1:
        yield parts[-1]
    # Last resort: the innermost heading cut at word-piece boundaries, shorter each time.
    offsets = embedder.tokenizer.encode(parts[-1], add_special_tokens=False).offsets
    keep = len(offsets) - 1
    while keep > 0:
        yield parts[-1][: offsets[keep - 1][1]]
        keep = keep * 2 // 3


def embed_texts(
    texts: list[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    embedder: Embedder | None = None,
) -> list[list[float]]:
    """Unit vectors for `texts`, in batches of KB_EMBED_BATCH_SIZE; progress(done, total) after each batch."""
    import numpy as np
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not texts:
        return []
    embedder = embedder or get_embedder()
    lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(list(texts), add_special_tokens=True)]
    too_long = sum(1 for n in lengths if n > embedder.max_tokens)
    if too_long:
        # Chunks never get here too long (parse_and_chunk sizes them); long queries can.
        logger.warning(
            "%d of %d texts exceed the model's %d word pieces; only their start is embedded",
            too_long,
            len(texts),
            embedder.max_tokens,
        )
    batch_size = max(1, settings.KB_EMBED_BATCH_SIZE)
    # Longest first, so each batch holds texts of about one length: a batch is padded to
    # its longest text, and a section's short last chunk beside full ones wastes the rest.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    by_position: list[list[float] | None] = [None] * len(texts)
    done = 0
    total = len(texts)
    for first in range(0, total, batch_size):
        positions = order[first : first + batch_size]
        batch = [texts[i] for i in positions]
        array = np.asarray(embedder.embed(batch), dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != len(batch):
            raise ImproperlyConfigured(f"The embedder returned {array.shape} for {len(batch)} texts.")
        if array.shape[1] != embedder.dim:
            raise ImproperlyConfigured(
                f"The embedding model returns {array.shape[1]}-dimensional vectors but KB_EMBED_DIM is "
                f"{embedder.dim}; set KB_EMBED_DIM to match the model (and migrate)."
            )
        # Both embedders ask for unit vectors; normalising again costs nothing and makes
        # cosine distance in pgvector correct whatever a server was configured to do.
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        array = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
        for position, vector in zip(positions, array.tolist(), strict=True):
            by_position[position] = vector
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return by_position  # type: ignore[return-value]  # every position is filled above
