"""Hit@1, hit@k and MRR@k of other fusion functions than kb's RRF, on the same legs.

    .venv/bin/python bench/fusion_variants.py --collection python311 [--k 5] [--legs]

Each leg runs once per answerable question (kb.retrieval.dense_leg / keyword_leg, 80
candidates); every variant then re-fuses those lists and refines them exactly as
kb.retrieval.search does, so the RRF row matches kb_eval's hybrid figures. --legs also
prints each question's top four passages per leg (* = an expected page).

Variants: convex combinations of normalised scores (Bruch et al., "An Analysis of Fusion
Functions for Hybrid Retrieval", 2023), RRF plus a boost for passages of documents that
both legs rank high, and RRF where the keyword leg only re-orders the dense leg's best M
(it brings no passage of its own).
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

from kb import retrieval  # noqa: E402
from kb.models import Collection  # noqa: E402

CANDIDATES = 80


def run_legs(collection_name: str, questions: str):
    """[(question item, dense rows, keyword rows)] and the chunks they name, by id."""
    collection = Collection.objects.get(name=collection_name)
    chunks = retrieval.Chunk.objects.in_collections([collection.pk])
    legs = []
    for item in question_set.answerable(questions):
        vector = retrieval.embed_query(item["q"])
        legs.append((item, retrieval.dense_leg(chunks, vector, CANDIDATES),
                     retrieval.keyword_leg(chunks, item["q"], CANDIDATES, collection_ids=[collection.pk])))  # fmt: skip
    by_pk = chunks.select_related("document").in_bulk({pk for _, d, kw in legs for pk, _ in d + kw})
    return legs, by_pk


def rrf():
    depth = settings.KB_FUSION_DEPTH or None
    weights = {"k": settings.KB_RRF_K, "dense_weight": settings.KB_DENSE_WEIGHT,
               "keyword_weight": settings.KB_KEYWORD_WEIGHT}  # fmt: skip
    return lambda d, kw, k: retrieval.fuse_top(d, kw, depth=depth or k, **weights)


def _scaled(rows, low: float | None):
    """Scores scaled to 0..1 by the list's own maximum and its minimum (or `low`)."""
    if not rows:
        return {}
    scores = [s for _, s in rows]
    bottom = min(scores) if low is None else low
    span = (max(scores) - bottom) or 1.0
    return {pk: (s - bottom) / span for pk, s in rows}


def convex(alpha: float, *, minmax: bool, depth: int = 40):
    def fuse(d, kw, k):
        d, kw = d[:depth], kw[:depth]
        low = None if minmax else 0.0
        ds, ks = _scaled(d, low), _scaled(kw, low)
        dr = {pk: n for n, (pk, _) in enumerate(d, 1)}
        kr = {pk: n for n, (pk, _) in enumerate(kw, 1)}
        rows = [(pk, alpha * ds.get(pk, 0.0) + (1 - alpha) * ks.get(pk, 0.0), dr.get(pk), kr.get(pk))
                for pk in set(ds) | set(ks)]  # fmt: skip
        return sorted(rows, key=lambda r: (-r[1], r[0]))

    return fuse


def document_boost(weight: float, by_pk, *, top: int = 20, rrf_k: int = 2):
    """RRF plus `weight` x the passage's document's RRF over the documents of each leg's `top`."""
    base = rrf()

    def fuse(d, kw, k):
        doc_score: dict[int, float] = {}
        for rows, w in ((d[:top], settings.KB_DENSE_WEIGHT), (kw[:top], settings.KB_KEYWORD_WEIGHT)):
            documents = list(dict.fromkeys(by_pk[pk].document_id for pk, _ in rows))
            for rank, document in enumerate(documents, 1):
                doc_score[document] = doc_score.get(document, 0.0) + w / (rrf_k + rank)
        rows = [
            (pk, s + weight * doc_score.get(by_pk[pk].document_id, 0.0), dr, kr) for pk, s, dr, kr in base(d, kw, k)
        ]
        return sorted(rows, key=lambda r: (-r[1], r[0]))

    return fuse


def dense_pool(pool: int):
    """RRF, with the keyword leg re-ranking only the dense leg's best `pool` (it adds no passage of its own)."""
    base = rrf()

    def fuse(d, kw, k):
        allowed = {pk for pk, _ in d[:pool]}
        return base(d, [row for row in kw if row[0] in allowed], k)

    return fuse


def evaluate(legs, by_pk, fuse, k: int) -> tuple[float, float, float]:
    ranks = []
    for item, dense, keyword in legs:
        similarity = dict(dense)
        pool = [row for row in fuse(dense, keyword, k) if row[1] > 0][: k * 3]
        hits = [retrieval.Hit(chunk=by_pk[pk], score=s, dense_rank=dr, keyword_rank=kr, similarity=similarity.get(pk))
                for pk, s, dr, kr in pool]  # fmt: skip
        hits = retrieval.refine(hits, top_k=k)
        wanted = set(item["expected"])
        ranks.append(next((n for n, h in enumerate(hits, 1) if h.chunk.document.source_path in wanted), None))
    n = len(ranks)
    return sum(r == 1 for r in ranks) / n, sum(r is not None for r in ranks) / n, sum(1 / r for r in ranks if r) / n


def _cell(rows, n: int, fmt: str, by_pk, wanted: set[str]) -> str:
    if n >= len(rows):
        return ""
    path = by_pk[rows[n][0]].document.source_path
    return f"{path:30.30} {rows[n][1]:{fmt}}{'*' if path in wanted else ' '}"


def print_legs(legs, by_pk) -> None:
    for item, dense, keyword in legs:
        wanted = set(item["expected"])
        print(item["q"])
        for n in range(4):
            dense_cell, keyword_cell = (
                _cell(rows, n, fmt, by_pk, wanted) for rows, fmt in ((dense, ".3f"), (keyword, "6.2f"))
            )
            print(f"    dense {dense_cell}   keyword {keyword_cell}")


def main() -> None:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--legs", action="store_true")
    shown, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = question_set.parse_args(__doc__.split("\n")[0])
    legs, by_pk = run_legs(args.collection, args.questions)
    if shown.legs:
        print_legs(legs, by_pk)
    variants = [("RRF (kb's default)", rrf())]
    variants += [(f"convex, min-max, alpha {a}", convex(a, minmax=True)) for a in (0.5, 0.6, 0.7, 0.8)]
    variants += [(f"convex, / best, alpha {a}", convex(a, minmax=False)) for a in (0.7, 0.8)]
    variants += [(f"RRF + {w} x document RRF, top {t}", document_boost(w, by_pk, top=t))
                 for w in (0.25, 0.5, 1.0) for t in (10, 20, 40)]  # fmt: skip
    variants += [(f"RRF, keyword re-ranks dense top {m}", dense_pool(m)) for m in (10, 20, 40, 80)]
    k = args.k
    print(f"{len(legs)} answerable questions, k={k}")
    print(f"{'fusion':<40} {'hit@1':>6} {f'hit@{k}':>6} {f'MRR@{k}':>6}")
    for label, fuse in variants:
        hit1, hitk, mrr = evaluate(legs, by_pk, fuse, k)
        print(f"{label:<40} {hit1:6.3f} {hitk:6.3f} {mrr:6.3f}")


if __name__ == "__main__":
    main()
