"""Storing a document's chunks: one binary COPY (ingestion.store, now) against bulk_create (before).

    .venv/bin/python bench/store_copy.py [--chunks 1549] [--rounds 5]

Writes CHUNKS chunks of the PostgreSQL manual's length (800 characters, a heading, a
384-dimensional vector) into one document, replacing them each time in one transaction as
`document_replace_chunks` does, alternating the two ways ROUNDS times. Reported per way:
median wall, this process's CPU seconds and the Postgres backend's (psutil on
pg_backend_pid(): the server parses text vectors and runs the BM25 triggers). Runs in a
database of its own (kb_bench_store).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import _harness

_harness.use_database("kb_bench_store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1549)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    import psutil
    from django.core.management import call_command
    from django.db import connection, transaction

    from ingestion import store
    from ingestion.pipeline import ChunkData
    from kb.access import system_user
    from kb.models import Chunk, Collection, Document
    from kb.services.collections import collection_create

    call_command("migrate", verbosity=0)
    Collection.objects.filter(name="bench: store").delete()
    collection = collection_create(user=system_user(), name="bench: store")
    document = Document.objects.create(collection=collection, source_path="store.html", content_hash="0" * 64)
    generation = collection.embed_generation
    words = "the backup log rotates nightly and each replica keeps its own snapshot of the write ahead log".split()
    rng = random.Random(16)
    chunks = [
        ChunkData(text=" ".join(rng.choices(words, k=140))[:800], heading_path=f"Administration > Part {i // 12}",
                  page=None, start_char=800 * i, end_char=800 * i + 800)
        for i in range(args.chunks)
    ]  # fmt: skip
    vectors = [[rng.uniform(-1, 1) for _ in range(384)] for _ in range(args.chunks)]

    def bulk_create() -> None:  # the code before, as it was
        rows = [
            Chunk(document=document, collection_id=collection.pk, generation=generation, ordinal=i, text=c.text,
                  heading_path=c.heading_path[:1000], page=c.page, start_char=c.start_char, end_char=c.end_char,
                  embedding=v)
            for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
        ]  # fmt: skip
        Chunk.objects.bulk_create(rows, batch_size=500)

    ways = {"bulk_create": bulk_create, "COPY": lambda: store._copy_chunks(document, generation, chunks, vectors)}
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = psutil.Process(cursor.fetchone()[0])
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, write in ways.items():
            server, cpu, wall = sum(backend.cpu_times()[:2]), time.process_time(), time.perf_counter()
            with transaction.atomic():
                Chunk.objects.filter(document=document).delete()
                write()
            figures[name].append(
                (time.perf_counter() - wall, time.process_time() - cpu, sum(backend.cpu_times()[:2]) - server)
            )
            assert Chunk.objects.filter(document=document).count() == args.chunks
    print(f"{_harness.cpu_name()}; {args.chunks} chunks, replace (delete + write) in one transaction, "
          f"{args.rounds} rounds alternating; medians")  # fmt: skip
    print("| way | wall | kb process CPU | Postgres backend CPU |\n|---|---|---|---|")
    for name, runs in figures.items():
        wall, cpu, server = (statistics.median(r[k] for r in runs) for k in range(3))
        print(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {server:.2f} s |")
    Collection.objects.filter(pk=collection.pk).delete()


if __name__ == "__main__":
    main()
