"""Ingestion with the model on an embedding server: one pass after parsing against parsing the next page meanwhile.

    .venv/bin/python bench/ingest_remote.py [--every 10] [--group 16] [--rounds 3] \
        [--latency 0.01] [--per-text 0.001]

Every K-th page of the PostgreSQL manual (Debian's postgresql-doc-15) is uploaded into a
collection embedded by a Text Embeddings Inference stand-in (tests/tei_standin.py: TEI's
`POST /embed`, answering after `latency` + `per_text` x texts seconds, a model of a GPU server's
time; no GPU server is reachable here). The pages are then processed in tasks of `--group`
pages exactly as a worker's ingest_documents task does (ingestion.processing), once with the
one-pass path a local model uses (parse every page, then embed all chunks) and once with the
overlapped path kb now takes for a server (parse the next page while this one is embedded),
alternating, fresh documents each time. Reported: the wall time of each path (median of the
rounds), their ratio, this process's CPU seconds, and the requests the stand-in answered.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _harness

_harness.use_database("kb_bench_remote")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from ingestion import embeddings, processing  # noqa: E402
from ingestion.status import documents_claim  # noqa: E402
from kb.models import Chunk  # noqa: E402
from tests.factories import add_document, make_collection  # noqa: E402

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
PATHS = {"one pass": processing._documents_process_one_pass, "overlapped": processing._documents_process_overlapped}


def run(path: str, pages: list[Path], group: int, round_: int) -> tuple[float, float, int]:
    owner, _ = get_user_model().objects.get_or_create(username="bench-remote", defaults={"is_staff": True})
    collection = make_collection(name=f"remote-{path.replace(' ', '-')}-{round_}-{time.time_ns()}", owner=owner)
    ids = [add_document(collection, page.name, page.read_text(errors="replace"), process=False).pk for page in pages]
    cpu, wall = time.process_time(), time.perf_counter()
    for first in range(0, len(ids), group):
        batch = ids[first : first + group]
        documents_claim(batch)
        PATHS[path](batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, Chunk.objects.filter(collection=collection).count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per request")
    parser.add_argument("--per-text", type=float, default=0.001, help="seconds per text")
    args = parser.parse_args()
    if not MANUAL.exists():
        raise SystemExit(f"{MANUAL} is missing: sudo apt-get install postgresql-doc-15")
    call_command("migrate", verbosity=0)
    pages = sorted(MANUAL.rglob("*.html"))[:: args.every]
    # The stand-in runs in a process of its own, as a real server would: in this one its JSON
    # encoding would hold the GIL that the parsing here needs.
    server = subprocess.Popen([sys.executable, "-m", "tests.tei_standin", str(args.latency), str(args.per_text)],
                              cwd=_harness.ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        settings.KB_EMBED_URL = server.stdout.readline().strip()
        embeddings._registry.clear()
        for path in PATHS:  # warm-up, not counted: the tokenizer loads, the first statements plan
            run(path, pages[:4], args.group, -1)
        results: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        for round_ in range(args.rounds):
            for path in PATHS if round_ % 2 == 0 else reversed(list(PATHS)):
                wall, cpu, chunks = run(path, pages, args.group, round_)
                results[path].append((wall, cpu))
                print(f"round {round_ + 1} {path:>10}: {wall:6.1f} s wall, {cpu:5.1f} s CPU, {chunks} chunks",
                      flush=True)  # fmt: skip
    finally:
        server.kill()
    medians = {p: statistics.median(w for w, _ in r) for p, r in results.items()}
    print(f"\n{_harness.cpu_name()}; {len(pages)} pages, tasks of {args.group}; stand-in {args.latency * 1000:.0f} ms "
          f"+ {args.per_text * 1000:.1f} ms per text")  # fmt: skip
    for path, rows in results.items():
        print(f"{path:>10}: wall median {medians[path]:.1f} s (rounds {', '.join(f'{w:.1f}' for w, _ in rows)}), "
              f"CPU median {statistics.median(c for _, c in rows):.1f} s")  # fmt: skip
    print(f"overlapped / one pass: {medians['overlapped'] / medians['one pass']:.2f}")


if __name__ == "__main__":
    main()
