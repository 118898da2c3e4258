"""Hybrid retrieval: pgvector HNSW (cosine) and Postgres full-text, fused by reciprocal rank.

Both legs start from selectors.chunks_readable_by(user), so access is decided in SQL before
anything is ranked, and nothing the user may not read can reach a prompt or a source list.
Each collection's vectors are searched with the question embedded by that collection's
own model (Collection.embed_model), through the HNSW index of that model's vector size.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connections, transaction
from django.db.models.functions import Cast
from django.utils import timezone
from pgvector.django import CosineDistance, VectorField

from ingestion.spec import EmbedSpec
from kb import abstention, rerank
from kb.keyword import KeywordPlan, keyword_leg, keyword_search  # noqa: F401 (keyword_leg: callers' name)
from kb.models import Chunk


@dataclass
class Hit:
    chunk: Chunk
    score: float
    dense_rank: int | None = None
    keyword_rank: int | None = None
    similarity: float | None = None
    # Adjacent chunks of the same section merged into this hit, in document order (the
    # first one is `chunk`, which citations point at); `text` is their text without overlap.
    chunks: list[Chunk] = field(default_factory=list)
    text: str = ""
    # The reranker's relevance (KB_RERANK_URL), when it re-ordered the passages.
    rerank_score: float | None = None

    def __post_init__(self) -> None:
        if not self.chunks:
            self.chunks = [self.chunk]
        if not self.text:
            self.text = self.chunk.text


@dataclass
class Timings:
    embed_ms: float = 0.0
    dense_ms: float = 0.0
    keyword_ms: float = 0.0
    fuse_ms: float = 0.0
    rerank_ms: float = 0.0
    judge_ms: float = 0.0
    # Wall-clock time of the whole search: less than the stages' sum, since the question is
    # embedded while the full-text leg runs.
    wall_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        stages = self.embed_ms + self.dense_ms + self.keyword_ms + self.fuse_ms + self.rerank_ms + self.judge_ms
        return self.wall_ms or stages


@dataclass
class Result:
    hits: list[Hit]
    timings: Timings = field(default_factory=Timings)
    # Cosine similarity of the closest readable chunk (None when the dense leg did not run).
    best_similarity: float | None = None
    # False when nothing relevant was found (kb.abstention.judge): no readable chunk matched,
    # or the evidence says the passages do not answer the question. Then no model is asked.
    relevant: bool = True
    # Whether the reranker ordered the hits (off, failed, or another mode than hybrid: False).
    reranked: bool = False
    evidence: abstention.Evidence = field(default_factory=abstention.Evidence)
    # Which words brought the keyword leg's candidates, and whether its ranking is exact.
    keyword_plan: KeywordPlan | None = None


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


_torch_threads_lock = threading.Lock()


@contextmanager
def _torch_threads(n: int):
    """Run the block with torch limited to `n` threads (when the local model is loaded).

    torch's thread count is one setting for the whole process: two questions embedded at once
    would each restore what the other set, leaving it wrong for every later caller, so the
    block holds a lock.
    """
    torch = sys.modules.get("torch")
    if torch is None or n <= 0:
        yield
        return
    with _torch_threads_lock:
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


@functools.cache
def _embedder_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="kb-embed-query")


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), _ms(t)


# Set once this process has embedded a question: its model is loaded (kb.asgi then freezes the heap).
question_model_loaded = threading.Event()


def embed_query(text: str, spec: EmbedSpec | None = None) -> list[float]:
    """The question's vector from the model `spec` names (default: the configured one)."""
    from ingestion.embeddings import get_embedder
    from ingestion.pipeline import embed_texts

    # One short text gains nothing from several threads, and on a busy machine their
    # hand-offs cost 5-10 times the work itself (measured: 40 ms on one thread, 200-700 ms
    # on two, with the cores shared); KB_QUERY_EMBED_THREADS sets it.
    embedder = get_embedder(spec, questions=True)
    if getattr(embedder, "backend", None) != "torch":
        vector = embed_texts([text], embedder=embedder)[0]  # ONNX Runtime sets its threads per session
    else:
        with _torch_threads(settings.KB_QUERY_EMBED_THREADS):
            vector = embed_texts([text], embedder=embedder)[0]
    question_model_loaded.set()
    return vector


def nearest(chunks, vector: list[float]):
    """`chunks` of the vector's size, closest first, with their cosine `distance`, ordered through their HNSW index.

    The cast and the size filter are exactly the index's expression and predicate
    (kb.vector_indexes); without either the planner cannot use it.
    """
    dim = len(vector)
    return (
        chunks.filter(embedding_dim=dim)
        .annotate(distance=CosineDistance(Cast("embedding", VectorField(dimensions=dim)), vector))
        .order_by("distance")
    )


def dense_leg(chunks, vector: list[float], limit: int) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity) best first, via the HNSW index of the vector's size."""
    alias = chunks.db  # the primary, or the read replica for search (KB_SEARCH_DATABASE)
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        # pgvector 0.8: keep scanning the index until `limit` rows pass the access
        # filter, instead of returning too few when the readable share is small.
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(settings.KB_HNSW_EF_SEARCH, limit)])
        rows = list(nearest(chunks, vector).values_list("pk", "distance")[:limit])
    if len(rows) < limit:
        # HNSW is approximate: it came back short because its scan gave up (hnsw.max_scan_tuples:
        # the readable chunks are a tiny share of a big table) or found no path to some of them
        # (a graph not yet vacuumed after many deletions: seen in the test suite). Fewer than
        # `limit` readable chunks reached means the set to search is small or the index failed
        # it; either way the exact search, through the collection index, is the right answer.
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            for setting, value in (("enable_indexscan", "off"), ("enable_seqscan", "on"),
                                   ("enable_bitmapscan", "on"), ("enable_sort", "on")):  # fmt: skip
                cursor.execute(f"SET LOCAL {setting} = {value}")
            rows = list(nearest(chunks, vector).values_list("pk", "distance")[:limit])
    rows.sort(key=lambda r: r[1])  # relaxed order may be slightly out of order
    return [(pk, 1.0 - dist) for pk, dist in rows]


def fuse(
    dense: list[tuple[int, float]],
    keyword: list[tuple[int, float]],
    *,
    k: int,
    dense_weight: float = 1.0,
    keyword_weight: float = 1.0,
) -> list[tuple[int, float, int | None, int | None]]:
    """Reciprocal rank fusion: (chunk id, score, dense rank, keyword rank), best first."""
    scores: dict[int, float] = {}
    dense_ranks: dict[int, int] = {}
    keyword_ranks: dict[int, int] = {}
    for rank, (pk, _) in enumerate(dense, start=1):
        dense_ranks[pk] = rank
        scores[pk] = scores.get(pk, 0.0) + dense_weight / (k + rank)
    for rank, (pk, _) in enumerate(keyword, start=1):
        keyword_ranks[pk] = rank
        scores[pk] = scores.get(pk, 0.0) + keyword_weight / (k + rank)
    # Equal scores (a dense first place against a keyword first place at equal weights) go
    # to the better dense rank: the leg that is stronger on every set measured, rather than
    # to whichever chunk happens to have the lower id.
    far = len(dense) + len(keyword) + 1
    ordered = sorted(scores.items(), key=lambda item: (-item[1], dense_ranks.get(item[0], far),
                                                       keyword_ranks.get(item[0], far), item[0]))  # fmt: skip
    return [(pk, score, dense_ranks.get(pk), keyword_ranks.get(pk)) for pk, score in ordered]


def _join(first: Chunk, second: Chunk, text: str) -> str:
    """`text` (ending with `first`) followed by `second`, without the words the chunks share."""
    if None not in (first.end_char, second.start_char) and second.start_char < first.end_char:
        return text + second.text[first.end_char - second.start_char :]
    return f"{text}\n\n{second.text}"


def merge_adjacent(hits: list[Hit]) -> list[Hit]:
    """Merge hits on consecutive chunks of the same section into one, at the best one's place.

    Two neighbours that both rank are one passage cut in two; given together they read as
    written and leave a slot for another passage.
    """
    runs: dict[tuple[int, str], list[Hit]] = {}
    for hit in hits:
        runs.setdefault((hit.chunk.document_id, hit.chunk.heading_path), []).append(hit)
    merged_into: dict[int, Hit] = {}
    for members in runs.values():
        members.sort(key=lambda h: h.chunk.ordinal)
        group = [members[0]]
        for hit in members[1:] + [None]:
            if hit is not None and hit.chunk.ordinal == group[-1].chunks[-1].ordinal + 1:
                group.append(hit)
                continue
            best = min(group, key=lambda h: hits.index(h))
            if len(group) > 1:
                chunks = [c for h in group for c in h.chunks]
                text = chunks[0].text
                for previous, following in itertools.pairwise(chunks):
                    text = _join(previous, following, text)
                best = Hit(
                    chunk=chunks[0], score=best.score, dense_rank=best.dense_rank, keyword_rank=best.keyword_rank,
                    similarity=max((h.similarity for h in group if h.similarity is not None), default=None),
                    chunks=chunks, text=text,
                )  # fmt: skip
            for h in group:
                merged_into[id(h)] = best
            group = [hit] if hit is not None else []
    out: list[Hit] = []
    for hit in hits:
        target = merged_into[id(hit)]
        if not any(target is kept for kept in out):
            out.append(target)
    return out


def _shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    if len(words) <= size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def drop_near_duplicates(hits: list[Hit], threshold: float) -> list[Hit]:
    """Drop a hit whose words mostly repeat a better one's (Jaccard of word trigrams >= threshold)."""
    kept: list[tuple[Hit, set]] = []
    for hit in hits:
        shingles = _shingles(hit.text)
        if any(len(shingles & other) / max(1, len(shingles | other)) >= threshold for _, other in kept):
            continue
        kept.append((hit, shingles))
    return [hit for hit, _ in kept]


def diversify_ties(hits: list[Hit]) -> list[Hit]:
    """Among hits with equal scores, put those from documents not yet shown first."""
    out: list[Hit] = []
    seen: dict[int, int] = {}
    i = 0
    while i < len(hits):
        j = i
        while j < len(hits) and math.isclose(hits[j].score, hits[i].score, rel_tol=1e-9, abs_tol=1e-12):
            j += 1
        tied = hits[i:j]
        while tied:
            # Stable: the first of the least shown documents, so the fused order breaks remaining ties.
            pick = min(tied, key=lambda h: seen.get(h.chunk.document_id, 0))
            tied.remove(pick)
            out.append(pick)
            seen[pick.chunk.document_id] = seen.get(pick.chunk.document_id, 0) + 1
        i = j
    return out


def prefer_recent(hits: list[Hit], *, weight: float, half_life_days: float, now=None) -> list[Hit]:
    """Add a small bonus for pages changed recently at their source, then re-sort.

    At most `weight`, halving every `half_life_days` of age (the source's last change, else
    when kb got the document). Far smaller than the fused scores' steps between ranks, it
    only re-orders near-ties: of two passages that match alike, the newer is shown first.
    When every document has the same age (one upload) it adds the same to all and changes nothing.
    """
    if weight <= 0 or not hits:
        return hits
    now = now or timezone.now()
    for hit in hits:
        changed = hit.chunk.document.source_modified or hit.chunk.document.created_at
        # Whole days: documents of one day's upload keep exactly equal scores, so ties between
        # them are still spread across documents (diversify_ties) as before.
        age_days = max(0, (now - changed).days)
        hit.score += weight * 0.5 ** (age_days / half_life_days)
    return sorted(hits, key=lambda h: -h.score)


def refine(hits: list[Hit], *, top_k: int) -> list[Hit]:
    """Merge neighbours, drop near-duplicates, spread ties across documents, keep the best `top_k`."""
    hits = merge_adjacent(hits)
    hits = drop_near_duplicates(hits, settings.KB_DUPLICATE_THRESHOLD)
    return diversify_ties(hits)[:top_k]


def fuse_top(dense, keyword, *, depth: int, **weights) -> list[tuple[int, float, int | None, int | None]]:
    """RRF of each leg's best `depth`, then the rest of the candidates (fused) below them.

    Fusing whole candidate lists lets a passage that both legs rank mediocre (9th and 9th)
    beat one that a leg ranks first; letting each leg put forward only its best few, as many
    as will be shown, keeps fusion to re-ordering strong candidates. The deeper ones still
    fill in when merging and de-duplication leave room.
    """
    top = fuse(dense[:depth], keyword[:depth], **weights)
    chosen = {pk for pk, *_ in top}
    rest = [row for row in fuse(dense, keyword, **weights) if row[0] not in chosen and row[1] > 0]
    if top and rest:
        # Keep scores falling down the list: the rest sit below the last of the top.
        scale = top[-1][1] / rest[0][1] * 0.999
        rest = [(pk, score * scale, dr, kr) for pk, score, dr, kr in rest]
    return top + rest


def _agree(dense, keyword, chunks: dict[int, Chunk], depth: int = 5) -> bool | None:
    """Whether the two legs' best `depth` share a document (None when a leg found nothing)."""
    if not dense or not keyword:
        return None
    documents = [{chunks[pk].document_id for pk, _ in leg[:depth] if pk in chunks} for leg in (dense, keyword)]
    return bool(documents[0] & documents[1])


def _rerank_text(hit: Hit) -> str:
    """What the reranker reads of a passage: its section's heading path, then its text."""
    return f"{hit.chunk.heading_path}\n\n{hit.text}" if hit.chunk.heading_path else hit.text


def search(
    *,
    user,
    query: str,
    collection_ids: Iterable[int] | None = None,
    top_k: int | None = None,
    mode: str = "hybrid",
) -> Result:
    """The best passages for `query` among the chunks the user may read (and, if given, in `collection_ids`).

    `mode` "dense" or "keyword" runs one leg alone (for kb_eval); the product uses "hybrid".
    """
    from kb import selectors

    top_k = top_k or settings.KB_TOP_K
    candidates = max(settings.KB_CANDIDATES, top_k)
    if collection_ids is not None:
        collection_ids = list(collection_ids)
    chunks = selectors.chunks_readable_by(user=user, collection_ids=collection_ids).using(settings.KB_SEARCH_DATABASE)
    timings = Timings()
    started = time.perf_counter()
    dense: list[tuple[int, float]] = []
    keyword: list[tuple[int, float]] = []
    keyword_plan = None
    # Each collection is searched with the model that made its vectors: the question is
    # embedded once per model among them (usually one).
    by_model = selectors.collections_by_model(user=user, collection_ids=collection_ids)
    scope_ids = [pk for ids in by_model.values() for pk in ids]
    embeddings = (
        {spec: _embedder_pool().submit(_timed, embed_query, query, spec) for spec in by_model}
        if mode in ("hybrid", "dense")
        else {}
    )
    if mode in ("hybrid", "keyword"):
        # The full-text leg waits on Postgres while the model embeds the question on the
        # CPU: running both at once saves the shorter of the two (about 20 ms a question).
        # The query stays in this thread, on this thread's connection and transaction.
        t = time.perf_counter()
        found = keyword_search(chunks, query, candidates, collection_ids=scope_ids)
        keyword, keyword_plan = found.rows, found.plan
        timings.keyword_ms = _ms(t)
    for spec, embedding in embeddings.items():
        vector, embed_ms = embedding.result()
        timings.embed_ms += embed_ms
        t = time.perf_counter()
        # With one model `chunks` already is its collections: filtering them again would
        # mislead the planner (selectors.chunks_readable_by).
        scoped = chunks if len(by_model) == 1 else chunks.in_collections(by_model[spec])
        dense += dense_leg(scoped, vector, candidates)
        timings.dense_ms += _ms(t)
    if len(embeddings) > 1:
        # Two models' cosines are not on one scale, but both say how close a passage is to
        # the question; merged by them, the candidates of both models interleave.
        dense = sorted(dense, key=lambda row: -row[1])[:candidates]
    t = time.perf_counter()
    weights = {
        "k": settings.KB_RRF_K,
        "dense_weight": settings.KB_DENSE_WEIGHT if mode != "keyword" else 0.0,
        "keyword_weight": settings.KB_KEYWORD_WEIGHT if mode != "dense" else 0.0,
    }
    fused = fuse_top(dense, keyword, depth=settings.KB_FUSION_DEPTH or top_k, **weights)
    # Refining merges and drops hits, so start from more than top_k; a reranker gets more.
    reranking = mode == "hybrid" and rerank.enabled()
    pool_size = max(top_k * 3, settings.KB_RERANK_CANDIDATES) if reranking else top_k * 3
    pool = [row for row in fused if row[1] > 0][:pool_size]
    similarity = dict(dense)
    # Neither the vector nor the tsvector is read from here on: decoding 384 floats a chunk
    # was a third of this fetch.
    fields = chunks.select_related("document").defer("embedding", "search_vector", "document__metadata")
    by_pk = fields.in_bulk([pk for pk, *_ in pool])
    hits = [
        Hit(chunk=by_pk[pk], score=score, dense_rank=dr, keyword_rank=kr, similarity=similarity.get(pk))
        for pk, score, dr, kr in pool
        if pk in by_pk
    ]
    hits = prefer_recent(hits, weight=settings.KB_RECENCY_WEIGHT, half_life_days=settings.KB_RECENCY_HALF_LIFE_DAYS)
    hits = refine(hits, top_k=len(hits) if reranking else top_k)
    timings.fuse_ms = _ms(t)
    reranked = False
    if reranking:
        t = time.perf_counter()
        hits, scores = rerank.rerank(query, hits, _rerank_text)
        timings.rerank_ms = _ms(t)
        for hit, score in zip(hits, scores or (), strict=False):
            hit.rerank_score = score
        reranked = scores is not None
        hits = hits[:top_k]
    best = max(similarity.values(), default=None)
    t = time.perf_counter()
    evidence = abstention.weigh(query, collection_ids=scope_ids, similarity=best,
                                agreement=_agree(dense, keyword, by_pk),
                                chunk_ids=[c.pk for h in hits for c in h.chunks])  # fmt: skip
    timings.judge_ms = _ms(t)
    relevant = bool(hits) and abstention.judge(evidence)
    timings.wall_ms = _ms(started)
    return Result(hits=hits, timings=timings, best_similarity=best, relevant=relevant, reranked=reranked,
                  evidence=evidence, keyword_plan=keyword_plan)  # fmt: skip
