"""The keyword legs side by side, alone and fused with the dense leg, on one or more question sets.

    .venv/bin/pip install -e '.[bench]'   # rank-bm25
    .venv/bin/python bench/keyword_legs.py --collection python311 \
        --questions bench/python311_questions.jsonl --questions bench/python311_heldout.jsonl

Legs, each run once per answerable question (80 candidates):
- `ts_rank_cd`: kb's keyword leg up to session 6 (IDF-weighted ts_rank_cd per word, kept
  here verbatim so the comparison can be rerun);
- `rank_bm25`: rank_bm25's BM25Okapi over the same lexemes (Postgres's stemming), the
  plain BM25 baseline;
- `bm25`: kb.retrieval.keyword_leg with KB_BM25_SECTION_WEIGHT=0: Okapi BM25 (Lucene's
  scoring) in Postgres from trigger-kept statistics, chunks alone;
- `bm25 sections`: rank_bm25 over whole sections (a document's chunks under one heading
  path, joined) instead of chunks, each section standing for its best chunk;
- `bm25 + sections`: kb.retrieval.keyword_leg as configured (by default each chunk's BM25
  plus its whole section's);
- `dense`: kb.retrieval.dense_leg.
Each keyword leg is then fused with the dense leg exactly as kb.retrieval.search does
(fuse_top, refine; the settings' RRF k and weights, or --rrf-k / --keyword-weight), and
hit@1, hit@k and MRR@k are counted by source page as kb_eval counts them.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

import django  # noqa: E402
import question_set  # noqa: E402  (bench/, on sys.path as the script's folder)

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402

from kb import retrieval  # noqa: E402
from kb.management.commands.kb_eval import same_source  # noqa: E402
from kb.models import Collection  # noqa: E402

CANDIDATES = 80

# kb's keyword leg before BM25 (session 6), for the comparison.
OLD_SQL = """
WITH scope AS NOT MATERIALIZED ({scope}),
lexemes AS MATERIALIZED (
    SELECT DISTINCT l FROM unnest(tsvector_to_array(to_tsvector(%s::regconfig, %s))) AS l
),
total AS MATERIALIZED (SELECT count(*)::float8 AS n FROM scope),
found AS MATERIALIZED (
    SELECT lexemes.l, count(*)::float8 AS df
    FROM lexemes JOIN scope s ON s.search_vector @@ to_tsquery('simple', quote_literal(lexemes.l))
    GROUP BY lexemes.l
),
kept AS MATERIALIZED (
    SELECT found.* FROM found, total WHERE found.df < floor(%s * total.n) + 1
),
chosen AS MATERIALIZED (
    SELECT * FROM kept UNION ALL SELECT * FROM found WHERE NOT EXISTS (SELECT 1 FROM kept)
),
weighted AS MATERIALIZED (
    SELECT to_tsquery('simple', quote_literal(chosen.l)) AS q,
           ln(1 + (total.n - chosen.df + 0.5) / (chosen.df + 0.5)) AS idf
    FROM chosen, total
)
SELECT s.pk, sum(w.idf * ts_rank_cd(%s::float4[], s.search_vector, w.q, 33)) AS score
FROM scope s JOIN weighted w ON s.search_vector @@ w.q
WHERE s.search_vector @@ (SELECT to_tsquery('simple', string_agg(quote_literal(l), ' | ')) FROM chosen)
GROUP BY s.pk
ORDER BY score DESC, s.pk
LIMIT %s
"""


def old_leg(chunks, text: str, limit: int) -> list[tuple[int, float]]:
    scope, params = chunks.order_by().values("pk", "search_vector").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(OLD_SQL.format(scope=scope), [*params, settings.KB_FTS_CONFIG, text.replace("\\", " "),
                                                     0.5, "{0.1, 0.2, 0.4, 1.0}", limit])  # fmt: skip
        return [(pk, float(score)) for pk, score in cursor.fetchall()]


class Reference:
    """rank_bm25 over the collection's chunks and over its sections, from the stored tsvectors."""

    def __init__(self, collection: Collection):
        from rank_bm25 import BM25Okapi

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.id, c.document_id, c.heading_path, (SELECT array_agg(array_to_string(array_fill(lexeme, "
                "ARRAY[coalesce(array_length(positions, 1), 1)]), ' ')) FROM unnest(c.search_vector)) "
                "FROM kb_chunk c WHERE c.collection_id = %s AND c.generation = %s ORDER BY c.id",
                [collection.pk, collection.embed_generation],
            )
            rows = cursor.fetchall()
        self.ids = [r[0] for r in rows]
        words = [" ".join(r[3] or []).split() for r in rows]
        self.chunks = BM25Okapi(words)
        sections: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, r in enumerate(rows):
            sections[(r[1], r[2])].append(i)
        self.members = list(sections.values())
        self.sections = BM25Okapi([[w for i in members for w in words[i]] for members in self.members])

    def chunk_leg(self, terms: list[str], limit: int) -> list[tuple[int, float]]:
        scores = self.chunks.get_scores(terms)
        best = sorted(range(len(self.ids)), key=lambda i: (-scores[i], self.ids[i]))[:limit]
        return [(self.ids[i], float(scores[i])) for i in best if scores[i] > 0]

    def section_leg(self, terms: list[str], limit: int) -> list[tuple[int, float]]:
        chunk_scores = self.chunks.get_scores(terms)
        scores = self.sections.get_scores(terms)
        order = sorted(range(len(self.members)), key=lambda s: -scores[s])[:limit]
        out = []
        for s in order:
            if scores[s] <= 0:
                break
            best = max(self.members[s], key=lambda i: chunk_scores[i])
            out.append((self.ids[best], float(scores[s])))
        return out


def lexemes(text: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT unnest(tsvector_to_array(to_tsvector(%s::regconfig, %s)))",
                       [settings.KB_FTS_CONFIG, text])  # fmt: skip
        return [r[0] for r in cursor.fetchall()]


def rank_of(hits, expected: list[str]) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if any(same_source(hit.chunk.document.source_path, e) for e in expected):
            return rank
    return None


def scores(ranks: list[int | None], k: int) -> str:
    n = len(ranks)
    hit1 = sum(r == 1 for r in ranks) / n
    hitk = sum(r is not None and r <= k for r in ranks) / n
    mrr = sum(1 / r for r in ranks if r and r <= k) / n
    return f"{hit1:>6.3f} {hitk:>6.3f} {mrr:>6.3f}"


def evaluate(collection: Collection, questions: str, k: int, weights: dict, reference: Reference,
             sweep: bool = False) -> None:
    chunks = retrieval.Chunk.objects.in_collections([collection.pk]).live()
    items = question_set.answerable(questions)
    legs = collections.defaultdict(list)
    took = collections.defaultdict(list)

    def timed(name, fn, *args):
        started = time.perf_counter()
        legs[name].append(fn(*args))
        took[name].append((time.perf_counter() - started) * 1000)

    scope = [collection.pk]
    for item in items:
        q = item["q"]
        legs["dense"].append(retrieval.dense_leg(chunks, retrieval.embed_query(q, collection.embed_spec), CANDIDATES))
        timed("ts_rank_cd", old_leg, chunks, q, CANDIDATES)
        with override_settings(KB_BM25_SECTION_WEIGHT=0.0):
            timed("bm25", lambda *a: retrieval.keyword_leg(*a, collection_ids=scope), chunks, q, CANDIDATES)
        timed("bm25 + sections", lambda *a: retrieval.keyword_leg(*a, collection_ids=scope), chunks, q, CANDIDATES)
        terms = lexemes(q)
        legs["rank_bm25"].append(reference.chunk_leg(terms, CANDIDATES))
        legs["bm25 sections"].append(reference.section_leg(terms, CANDIDATES))
    wanted = {pk for rows in legs.values() for question in rows for pk, _ in question}
    by_pk = chunks.select_related("document").in_bulk(wanted)

    def ranks(fuse) -> list[int | None]:
        out = []
        for i, item in enumerate(items):
            rows = fuse(i)
            similarity = dict(legs["dense"][i])
            hits = [retrieval.Hit(chunk=by_pk[pk], score=s, dense_rank=dr, keyword_rank=kr,
                                  similarity=similarity.get(pk)) for pk, s, dr, kr in rows[: k * 3]]  # fmt: skip
            out.append(rank_of(retrieval.refine(hits, top_k=k), item["expected"]))
        return out

    print(f"\n{questions}: {len(items)} answerable questions, k={k}, "
          f"RRF k {weights['k']}, keyword weight {weights['keyword_weight']}")  # fmt: skip
    print(f"{'leg':<26} {'hit@1':>6} {f'hit@{k}':>6} {f'MRR@{k}':>6}")
    alone = dict(weights, dense_weight=0.0, keyword_weight=1.0)
    depth = settings.KB_FUSION_DEPTH or k
    for name in ("dense", "ts_rank_cd", "rank_bm25", "bm25", "bm25 sections", "bm25 + sections"):
        if name == "dense":
            fuse = lambda i: retrieval.fuse_top(legs["dense"][i], [], depth=depth, **dict(weights, dense_weight=1.0))  # noqa: E731
        else:
            fuse = lambda i, name=name: retrieval.fuse_top([], legs[name][i], depth=depth, **alone)  # noqa: E731
        print(f"{name:<26} {scores(ranks(fuse), k)}")
    for name in ("ts_rank_cd", "rank_bm25", "bm25", "bm25 sections", "bm25 + sections"):
        fuse = lambda i, name=name: retrieval.fuse_top(legs["dense"][i], legs[name][i], depth=depth, **weights)  # noqa: E731
        print(f"{'dense + ' + name:<26} {scores(ranks(fuse), k)}")
    print("keyword leg latency, ms (median / p90 over the questions, 80 candidates): " + ", ".join(
        f"{name} {statistics.median(v):.0f} / {sorted(v)[int(0.9 * (len(v) - 1))]:.0f}" for name, v in took.items()))
    if sweep:
        swept = "bm25 + sections"
        print(f"dense + {swept} over RRF k x keyword weight (hit@1 hit@{k} MRR@{k}):")
        for rrf_k in (1, 2, 3, 5, 10, 60):
            row = []
            for weight in (0.5, 0.75, 0.9, 1.0, 1.25):
                w = dict(weights, k=rrf_k, keyword_weight=weight)
                fuse = lambda i, w=w: retrieval.fuse_top(legs["dense"][i], legs[swept][i], depth=depth, **w)  # noqa: E731
                row.append(f"w {weight}: {scores(ranks(fuse), k)}")
            print(f"  k {rrf_k:>2}  " + "   ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--questions", action="append", help="a kb_eval set (repeat for several)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--rrf-k", type=float, default=settings.KB_RRF_K)
    parser.add_argument("--keyword-weight", type=float, default=settings.KB_KEYWORD_WEIGHT)
    parser.add_argument("--sweep", action="store_true", help="also dense + bm25 over a grid of RRF k and weights")
    args = parser.parse_args()
    try:
        collection = Collection.objects.get(name=args.collection)
    except Collection.DoesNotExist:
        sys.exit(f"No collection named {args.collection!r}: ingest it first "
                 "(docs/benchmarks.md, 'Corpus and questions').")
    reference = Reference(collection)
    weights = {"k": args.rrf_k, "dense_weight": settings.KB_DENSE_WEIGHT, "keyword_weight": args.keyword_weight}
    for questions in args.questions or [str(question_set.DEFAULT_QUESTIONS)]:
        evaluate(collection, questions, args.k, weights, reference, args.sweep)


if __name__ == "__main__":
    main()
