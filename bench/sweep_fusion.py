"""Hit@1, hit@k and MRR@k of hybrid retrieval over a grid of RRF k, leg weights and candidate counts.

    .venv/bin/python bench/sweep_fusion.py --collection python311 [--k 5]

Each leg runs once per question (kb.retrieval.dense_leg / keyword_leg with the largest
candidate count); the grid then re-fuses and refines those lists exactly as
kb.retrieval.search does, so the figures match kb_eval's for the same settings.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

import django  # noqa: E402
import question_set  # noqa: E402  (bench/, on sys.path as the script's folder)

django.setup()

from kb import retrieval  # noqa: E402
from kb.models import Collection  # noqa: E402


def main() -> None:
    args = question_set.parse_args()
    collection = Collection.objects.get(name=args.collection)
    chunks = retrieval.Chunk.objects.in_collections([collection.pk])
    items = question_set.answerable(args.questions)
    max_candidates = 80
    legs = []
    scope = [collection.pk]
    for item in items:
        vector = retrieval.embed_query(item["q"])
        legs.append((retrieval.dense_leg(chunks, vector, max_candidates),
                     retrieval.keyword_leg(chunks, item["q"], max_candidates, collection_ids=scope)))  # fmt: skip
    by_pk = chunks.select_related("document").in_bulk({pk for dense, keyword in legs for pk, _ in dense + keyword})
    k = args.k
    print(f"{len(items)} answerable questions, k={k}")
    print(f"{'rrf_k':>5} {'w_dense':>7} {'w_kw':>5} {'cand':>4}  {'hit@1':>6} {f'hit@{k}':>6} {f'MRR@{k}':>6}")
    grid = itertools.product((2, 5, 10, 30, 60), (1.0,), (0.3, 0.5, 0.75, 1.0), (5, 10, 15, 20))
    for rrf_k, w_dense, w_kw, cand in grid:
        ranks = []
        for item, (dense, keyword) in zip(items, legs, strict=True):
            fused = retrieval.fuse(dense[:cand], keyword[:cand], k=rrf_k, dense_weight=w_dense, keyword_weight=w_kw)
            similarity = dict(dense)
            hits = [retrieval.Hit(chunk=by_pk[pk], score=s, dense_rank=dr, keyword_rank=kr,
                                  similarity=similarity.get(pk))
                    for pk, s, dr, kr in fused[: k * 3]]  # fmt: skip
            hits = retrieval.refine(hits, top_k=k)
            wanted = set(item["expected"])
            ranks.append(next((n for n, h in enumerate(hits, 1) if h.chunk.document.source_path in wanted), None))
        n = len(ranks)
        hit1 = sum(r == 1 for r in ranks) / n
        hitk = sum(r is not None for r in ranks) / n
        mrr = sum(1 / r for r in ranks if r) / n
        print(f"{rrf_k:>5} {w_dense:>7} {w_kw:>5} {cand:>4}  {hit1:>6.3f} {hitk:>6.3f} {mrr:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
