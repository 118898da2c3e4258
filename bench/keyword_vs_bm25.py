"""The full-text leg against BM25 on the very same lexemes, to see what Postgres ranking loses.

    .venv/bin/pip install -e '.[bench]'   # rank-bm25
    .venv/bin/python bench/keyword_vs_bm25.py --collection python311 [--k 5]

Both rank the collection's chunks for each answerable question of the set: kb's keyword leg
(kb.retrieval.keyword_leg, raw: no fusion, no merging) and rank_bm25's BM25Okapi over each
chunk's stored tsvector (Postgres's own stemming and stop words, term counts from positions).
Prints hit@1, hit@k and MRR@k by source document.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

import django  # noqa: E402
import question_set  # noqa: E402  (bench/, on sys.path as the script's folder)

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from rank_bm25 import BM25Okapi  # noqa: E402

from kb import retrieval  # noqa: E402
from kb.models import Chunk, Collection  # noqa: E402


def metrics(ranked_sources: list[list[str]], expected: list[list[str]], k: int) -> dict:
    ranks = []
    for sources, wanted in zip(ranked_sources, expected, strict=True):
        rank = next((n for n, s in enumerate(sources[:k], start=1) if s in wanted), None)
        ranks.append(rank)
    n = len(ranks)
    return {
        "hit@1": sum(r == 1 for r in ranks) / n,
        f"hit@{k}": sum(r is not None for r in ranks) / n,
        f"mrr@{k}": sum(1 / r for r in ranks if r) / n,
    }


def main() -> None:
    args = question_set.parse_args()
    collection = Collection.objects.get(name=args.collection)
    items = question_set.answerable(args.questions)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, d.source_path, (SELECT array_agg(array_to_string(array_fill(lexeme, "
            "ARRAY[coalesce(array_length(positions, 1), 1)]), ' ')) FROM unnest(c.search_vector)) "
            "FROM kb_chunk c JOIN kb_document d ON d.id = c.document_id WHERE c.collection_id = %s ORDER BY c.id",
            [collection.pk],
        )
        rows = cursor.fetchall()
    ids = [r[0] for r in rows]
    source_of = {r[0]: r[1] for r in rows}
    corpus = [" ".join(r[2] or []).split() for r in rows]
    bm25 = BM25Okapi(corpus)
    print(f"{len(ids)} chunks, {len(items)} answerable questions, k={args.k}")

    chunks = Chunk.objects.in_collections([collection.pk])
    bm25_sources, pg_sources = [], []
    for item in items:
        with connection.cursor() as cursor:
            cursor.execute("SELECT unnest(tsvector_to_array(to_tsvector(%s::regconfig, %s)))",
                           [settings.KB_FTS_CONFIG, item["q"]])  # fmt: skip
            terms = [r[0] for r in cursor.fetchall()]
        scores = bm25.get_scores(terms)
        best = sorted(range(len(ids)), key=lambda i: -scores[i])[: args.k]
        bm25_sources.append([source_of[ids[i]] for i in best if scores[i] > 0])
        pg = retrieval.keyword_leg(chunks, item["q"], args.k)
        pg_sources.append([source_of[pk] for pk, _ in pg if pk in source_of])  # chunks added meanwhile: skip
    expected = [item["expected"] for item in items]
    for label, ranked in (("postgres keyword leg", pg_sources), ("BM25 (rank_bm25)", bm25_sources)):
        m = metrics(ranked, expected, args.k)
        print(f"{label:<22} " + "  ".join(f"{name} {value:.3f}" for name, value in m.items()))


if __name__ == "__main__":
    main()
