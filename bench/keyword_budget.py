"""What bounding the keyword leg's candidates (KB_KEYWORD_CANDIDATES) costs in quality and buys in time.

    .venv/bin/python bench/keyword_budget.py --collection python311 \
        --questions bench/python311_questions.jsonl --questions bench/python311_heldout.jsonl \
        [--budgets 0 250 500 1000 2000]

For each question set and budget: the keyword leg alone and fused with the dense leg (as
kb.retrieval.search fuses and refines them), hit@1, hit@k and MRR@k by source page as kb_eval
counts them; how many of the 40 candidates it hands to fusion equal the unbounded leg's
(budget 0) in the same order; how often the plan proved its ranking exact; chunks read and
time. `old` is the rule before the budget (candidates from every word in at most half of the
chunks, all words when none is), reproduced by replacing kb.keyword.plan only.
"""

from __future__ import annotations

import argparse
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
from django.db import ProgrammingError  # noqa: E402
from django.test import override_settings  # noqa: E402

from kb import keyword, retrieval  # noqa: E402
from kb.management.commands.kb_eval import same_source  # noqa: E402
from kb.models import Collection  # noqa: E402

LIMIT = 40  # KB_CANDIDATES: what search asks of each leg


def old_plan(terms, budget, n):
    """The rule before the budget: every word in at most half of the chunks brings candidates."""
    out = keyword.KeywordPlan(terms=sorted(terms, key=lambda t: (t.df, t.lexeme)), budget=0)
    selective = [t.lexeme for t in out.terms if t.df <= 0.5 * n]
    out.essential = selective or [t.lexeme for t in out.terms]
    out.expected = sum(t.df for t in out.terms if t.lexeme in out.essential)
    return out


def rank_of(hits, expected) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if any(same_source(hit.chunk.document.source_path, e) for e in expected):
            return rank
    return None


def scores(ranks, k) -> tuple[float, float, float]:
    n = len(ranks)
    return (sum(r == 1 for r in ranks) / n, sum(r is not None and r <= k for r in ranks) / n,
            sum(1 / r for r in ranks if r and r <= k) / n)  # fmt: skip


def run(collection, path: str, budgets: list, k: int) -> list[dict]:
    chunks = retrieval.Chunk.objects.in_collections([collection.pk]).live()
    items = question_set.answerable(path)
    dense = [retrieval.dense_leg(chunks, retrieval.embed_query(q["q"], collection.embed_spec), LIMIT) for q in items]
    legs, plans, took = {}, {}, {}
    real_plan = keyword.plan
    for budget in budgets:
        keyword.plan = old_plan if budget == "old" else real_plan
        rows, ps, ms = [], [], []
        with override_settings(KB_KEYWORD_CANDIDATES=0 if budget == "old" else budget):
            for item in items:
                t = time.perf_counter()
                found = keyword.keyword_search(chunks, item["q"], LIMIT, collection_ids=[collection.pk])
                ms.append((time.perf_counter() - t) * 1000)
                rows.append(found.rows)
                ps.append(found.plan)
        keyword.plan = real_plan
        legs[budget], plans[budget], took[budget] = rows, ps, ms
    wanted = {pk for rows in [*legs.values(), dense] for question in rows for pk, _ in question}
    by_pk = chunks.select_related("document").in_bulk(wanted)
    weights = {"k": settings.KB_RRF_K, "dense_weight": settings.KB_DENSE_WEIGHT,
               "keyword_weight": settings.KB_KEYWORD_WEIGHT}  # fmt: skip
    depth = settings.KB_FUSION_DEPTH or k

    def ranks(budget, fused: bool) -> list:
        out = []
        for i, item in enumerate(items):
            w = weights if fused else dict(weights, dense_weight=0.0, keyword_weight=1.0)
            rows = retrieval.fuse_top(dense[i] if fused else [], legs[budget][i], depth=depth, **w)
            similarity = dict(dense[i])
            hits = [retrieval.Hit(chunk=by_pk[pk], score=s, dense_rank=dr, keyword_rank=kr,
                                  similarity=similarity.get(pk)) for pk, s, dr, kr in rows[: k * 3]]  # fmt: skip
            out.append(rank_of(retrieval.refine(hits, top_k=k), item["expected"]))
        return out

    report = []
    for budget in budgets:
        same = [sum(a[0] == b[0] for a, b in zip(mine, ref, strict=False)) / max(1, len(ref))
                for mine, ref in zip(legs[budget], legs[0], strict=True)] if 0 in legs else []  # fmt: skip
        report.append({
            "set": Path(path).name, "budget": budget, "questions": len(items),
            "keyword": scores(ranks(budget, False), k), "hybrid": scores(ranks(budget, True), k),
            "same_as_unbounded": statistics.mean(same) if same else None,
            "identical_lists": sum(s == 1.0 for s in same) if same else None,
            "exact": sum(bool(p.exact) for p in plans[budget]),
            "read_p50": statistics.median(p.candidates for p in plans[budget]),
            "read_max": max(p.candidates for p in plans[budget]),
            "ms_p50": statistics.median(took[budget]),
            "ms_p95": sorted(took[budget])[round(0.95 * (len(took[budget]) - 1))],
        })  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--questions", action="append")
    parser.add_argument("--budgets", nargs="+", default=["old", "0", "250", "500", "1000", "2000"])
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    try:
        collection = Collection.objects.get(name=args.collection)
    except ProgrammingError:
        sys.exit("The database has no kb tables yet: run `.venv/bin/python manage.py migrate` first.")
    except Collection.DoesNotExist:
        sys.exit(f"No collection named {args.collection!r}: ingest it first "
                 "(docs/benchmarks.md, 'Corpus and questions').")  # fmt: skip
    budgets = [b if b == "old" else int(b) for b in args.budgets]
    print(f"{collection.name}: {retrieval.Chunk.objects.in_collections([collection.pk]).live().count()} chunks, "
          f"k={args.k}, {LIMIT} candidates per leg")  # fmt: skip
    print(f"{'set':<26} {'budget':>6} | keyword hit@1 hit@k MRR | hybrid hit@1 hit@k MRR | same as 0 "
          f"(identical) | exact | read p50/max | ms p50/p95")  # fmt: skip
    for path in args.questions or [str(question_set.DEFAULT_QUESTIONS)]:
        for r in run(collection, path, budgets, args.k):
            kw, hy = r["keyword"], r["hybrid"]
            same = "" if r["same_as_unbounded"] is None else f"{r['same_as_unbounded']:.3f} ({r['identical_lists']})"
            print(f"{r['set']:<26} {r['budget']!s:>6} | {kw[0]:.3f} {kw[1]:.3f} {kw[2]:.3f} | "
                  f"{hy[0]:.3f} {hy[1]:.3f} {hy[2]:.3f} | {same:>13} | {r['exact']:>3}/{r['questions']} | "
                  f"{r['read_p50']:.0f}/{r['read_max']} | {r['ms_p50']:.0f}/{r['ms_p95']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
