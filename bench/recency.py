"""What the recency term (KB_RECENCY_WEIGHT) does to retrieval: kb_eval's hybrid figures with it off
and on, first as the collection is, then with every document given a random age.

    .venv/bin/python bench/recency.py --collection python311 \
        --questions bench/python311_questions.jsonl --questions bench/python311_heldout.jsonl

An uploaded collection's documents are all about as old (their ages in whole days are equal),
so the term adds the same to every passage and must change nothing: the first table checks
that. Sources bring documents of every age; the second table gives each document an age drawn
uniformly from 0 to --years years (seeded) and shows how far the term moves the figures when ages
differ but have nothing to do with the answer, as on these questions: the cost of preferring
the newer, which should be close to nothing. The ages are set inside a transaction that is
rolled back: the collection is left as it was.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from kb.access import system_user  # noqa: E402
from kb.management.commands.kb_eval import evaluate, load_questions  # noqa: E402
from kb.models import Collection, Document  # noqa: E402

WEIGHTS = (0.0, 0.005, 0.02)


def figures(collection: Collection, questions: list[dict], k: int) -> dict[float, dict]:
    out = {}
    for weight in WEIGHTS:
        settings.KB_RECENCY_WEIGHT = weight
        report = evaluate(user=system_user(), questions=questions, collection_ids=[collection.pk], k=k,
                          modes=("hybrid",))  # fmt: skip
        out[weight] = {
            **report["modes"]["hybrid"],
            "ranks": [q["rank"] for q in report["per_question"]],
            "tops": [q["top"] for q in report["per_question"]],
        }
    return out


def show(title: str, rows: dict[str, dict[float, dict]], k: int) -> None:
    print(f"\n{title}")
    print(f"| set | KB_RECENCY_WEIGHT | hit@1 | hit@{k} | MRR@{k} | first hit moved vs 0 | top {k} re-ordered vs 0 |")
    print("|---|---|---|---|---|---|---|")
    for name, by_weight in rows.items():
        for weight, m in by_weight.items():
            print(f"| {name} | {weight:g} | {m['hit@1']:.3f} | {m[f'hit@{k}']:.3f} | {m[f'mrr@{k}']:.3f} | "
                  f"{m['changed']} | {m['reordered']} |")  # fmt: skip


def run(collection: Collection, sets: dict[str, list[dict]], k: int) -> dict[str, dict[float, dict]]:
    rows = {}
    for name, questions in sets.items():
        by_weight = figures(collection, questions, k)
        rows[name] = by_weight
        base = by_weight[0.0]
        for m in by_weight.values():
            m["changed"] = m["reordered"] = "—"
        for weight in WEIGHTS[1:]:
            m = by_weight[weight]
            m["changed"] = sum(a != b for a, b in zip(base["ranks"], m["ranks"], strict=True))
            m["reordered"] = sum(a != b for a, b in zip(base["tops"], m["tops"], strict=True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--questions", action="append", required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--years", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    collection = Collection.objects.get(name=args.collection)
    sets = {Path(p).stem: [q for q in load_questions(Path(p)) if q["expected"]] for p in args.questions}
    print(f"collection {collection.name}: {collection.documents.count()} documents; "
          f"half-life {settings.KB_RECENCY_HALF_LIFE_DAYS:g} days")  # fmt: skip
    show("As uploaded (every document the same age in days)", run(collection, sets, args.k), args.k)
    rng = random.Random(args.seed)
    now = timezone.now()
    with transaction.atomic():
        for pk in collection.documents.order_by("pk").values_list("pk", flat=True):
            age = timedelta(days=rng.uniform(0, 365 * args.years))
            Document.objects.filter(pk=pk).update(source_modified=now - age)
        rows = run(collection, sets, args.k)
        transaction.set_rollback(True)
    show(f"Random ages, 0 to {args.years:g} years (seed {args.seed}): ages unrelated to the answers", rows, args.k)


if __name__ == "__main__":
    main()
