"""Hybrid retrieval: pgvector HNSW (cosine) and Postgres full-text, fused by reciprocal rank.

Both legs start from Chunk.objects.readable_by(user), so access is decided in SQL before
anything is ranked, and nothing the user may not read can reach a prompt or a source list.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.postgres.search import SearchQueryField, SearchRank
from django.db import connection, transaction
from django.db.models import BooleanField, F, Func, Value
from pgvector.django import CosineDistance

from kb.models import Chunk


class AnyTermQuery(Func):
    """A tsquery that matches any of the question's stemmed, non-stop words.

    websearch_to_tsquery ANDs every word, so a natural question ("how do I schedule
    the nightly backup?") would only match chunks holding all of them; OR-ing the
    lexemes and ranking by cover density lets the rank, not the match, decide.
    """

    output_field = SearchQueryField()
    template = (
        "to_tsquery('simple', array_to_string(ARRAY(SELECT quote_literal(l) FROM "
        "unnest(tsvector_to_array(to_tsvector(%(config)s::regconfig, %(expressions)s))) AS l), ' | '))"
    )

    def __init__(self, text: str, config: str):
        super().__init__(Value(text.replace("\\", " ")), config=f"'{config}'")


class Matches(Func):
    """tsvector @@ tsquery (Django's own lookup would re-wrap our query in plainto_tsquery)."""

    arg_joiner = " @@ "
    template = "(%(expressions)s)"
    output_field = BooleanField()


@dataclass
class Hit:
    chunk: Chunk
    score: float
    dense_rank: int | None = None
    keyword_rank: int | None = None
    similarity: float | None = None


@dataclass
class Timings:
    embed_ms: float = 0.0
    dense_ms: float = 0.0
    keyword_ms: float = 0.0
    fuse_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.dense_ms + self.keyword_ms + self.fuse_ms


@dataclass
class Result:
    hits: list[Hit]
    timings: Timings = field(default_factory=Timings)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def embed_query(text: str) -> list[float]:
    from ingestion.pipeline import embed_texts

    return embed_texts([text])[0]


def dense_leg(chunks, vector: list[float], limit: int) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity) best first, via the HNSW index."""
    with transaction.atomic(), connection.cursor() as cursor:
        # pgvector 0.8: keep scanning the index until `limit` rows pass the access
        # filter, instead of returning too few when the readable share is small.
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(40, limit)])
        rows = list(
            chunks.annotate(distance=CosineDistance("embedding", vector))
            .order_by("distance")
            .values_list("pk", "distance")[:limit]
        )
    rows.sort(key=lambda r: r[1])  # relaxed order may be slightly out of order
    return [(pk, 1.0 - dist) for pk, dist in rows]


def keyword_leg(chunks, text: str, limit: int) -> list[tuple[int, float]]:
    """(chunk id, ts_rank_cd) best first, via the GIN index on the stored tsvector."""
    query = AnyTermQuery(text, settings.KB_FTS_CONFIG)
    rank = SearchRank(F("search_vector"), query, cover_density=True, normalization=Value(1))
    return list(
        chunks.alias(matches=Matches(F("search_vector"), query))
        .filter(matches=True)
        .annotate(rank=rank)
        .order_by("-rank", "pk")
        .values_list("pk", "rank")[:limit]
    )


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
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [(pk, score, dense_ranks.get(pk), keyword_ranks.get(pk)) for pk, score in ordered]


def search(
    *,
    user,
    query: str,
    collection_ids: Iterable[int] | None = None,
    top_k: int | None = None,
    mode: str = "hybrid",
) -> Result:
    """The best chunks for `query` among those the user may read (and, if given, in `collection_ids`)."""
    from kb import selectors

    top_k = top_k or settings.KB_TOP_K
    candidates = max(settings.KB_CANDIDATES, top_k)
    chunks = selectors.chunks_readable_by(user=user)
    if collection_ids is not None:
        chunks = chunks.in_collections(list(collection_ids))
    timings = Timings()
    dense: list[tuple[int, float]] = []
    keyword: list[tuple[int, float]] = []
    if mode in ("hybrid", "dense"):
        t = time.perf_counter()
        vector = embed_query(query)
        timings.embed_ms = _ms(t)
        t = time.perf_counter()
        dense = dense_leg(chunks, vector, candidates)
        timings.dense_ms = _ms(t)
    if mode in ("hybrid", "keyword"):
        t = time.perf_counter()
        keyword = keyword_leg(chunks, query, candidates)
        timings.keyword_ms = _ms(t)
    t = time.perf_counter()
    fused = fuse(
        dense,
        keyword,
        k=settings.KB_RRF_K,
        dense_weight=settings.KB_DENSE_WEIGHT if mode != "keyword" else 0.0,
        keyword_weight=settings.KB_KEYWORD_WEIGHT if mode != "dense" else 0.0,
    )[:top_k]
    similarity = dict(dense)
    by_pk = chunks.select_related("document").in_bulk([pk for pk, *_ in fused])
    hits = [
        Hit(chunk=by_pk[pk], score=score, dense_rank=dr, keyword_rank=kr, similarity=similarity.get(pk))
        for pk, score, dr, kr in fused
        if pk in by_pk
    ]
    timings.fuse_ms = _ms(t)
    return Result(hits=hits, timings=timings)
