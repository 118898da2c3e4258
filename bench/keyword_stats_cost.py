"""What the BM25 statistics triggers cost when chunks are written and deleted.

    .venv/bin/python bench/keyword_stats_cost.py --collection python311 [--rounds 3]

Copies the collection's live chunks into a scratch generation and deletes them again, in a
transaction that is rolled back, once with kb_chunk's user triggers (migration 0011) disabled
and once enabled, alternating; prints each time and the ratio of the medians. The copy goes
through every index (HNSW, GIN), as an ingest does; nothing is kept.
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

django.setup()

from django.db import connection, transaction  # noqa: E402

from kb.models import Collection  # noqa: E402

COLUMNS = "document_id, collection_id, ordinal, text, heading_path, page, start_char, end_char, embedding"
SCRATCH = -1  # a generation no collection uses


class _RollBack(Exception):
    pass


def one_round(collection: Collection, *, triggers: bool) -> float:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if not triggers:
                cursor.execute("ALTER TABLE kb_chunk DISABLE TRIGGER USER")
            started = time.perf_counter()
            cursor.execute(
                f"INSERT INTO kb_chunk ({COLUMNS}, generation) SELECT {COLUMNS}, %s FROM kb_chunk "
                "WHERE collection_id = %s AND generation = %s",
                [SCRATCH, collection.pk, collection.embed_generation],
            )
            cursor.execute("DELETE FROM kb_chunk WHERE generation = %s", [SCRATCH])
            took = time.perf_counter() - started
            raise _RollBack
    except _RollBack:
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        collection = Collection.objects.get(name=args.collection)
    except Collection.DoesNotExist:
        sys.exit(f"No collection named {args.collection!r}: ingest it first (docs/benchmarks.md).")
    count = collection.documents.aggregate(n=django.db.models.Sum("chunk_count"))["n"] or 0
    times: dict[str, list[float]] = {"without triggers": [], "with triggers": []}
    for _ in range(args.rounds):
        times["without triggers"].append(one_round(collection, triggers=False))
        times["with triggers"].append(one_round(collection, triggers=True))
    for label, values in times.items():
        print(f"{label:<17} {count} chunks written and deleted: " + ", ".join(f"{v:.2f} s" for v in values))
    ratio = statistics.median(times["with triggers"]) / statistics.median(times["without triggers"])
    print(f"median ratio with / without: {ratio:.2f}")


if __name__ == "__main__":
    main()
