"""Ingestion throughput with 1, 2 and 4 worker processes: the real Celery path end to end.

    .venv/bin/python bench/ingest_workers.py [--workers 1 2 4]
        [--every 10] [--group 16] [--threads auto|default] [--json OUT]

A ZIP of every K-th page of the PostgreSQL manual (Debian's postgresql-doc-15) is uploaded
through `archive_upload`, exactly as the upload page does, into a fresh collection; a real
Celery worker on the real Redis, started with `--concurrency W` (W prefork processes), parses,
chunks, embeds and stores it. The clock runs from the upload's commit (the tasks leave then)
to the moment no document is queued or processing. Before that, each run warms its pool
with W one-page tasks, so every process has its model loaded as a long-lived worker has.

Reported per W: documents, chunks, wall, documents/s and chunks/s, speed-up over W = 1 of the
same run, efficiency (speed-up ÷ W), the worker's CPU seconds (all its processes) and the
summed peak RSS. `--threads auto` gives each process cores ÷ W torch threads (OMP_NUM_THREADS),
`one` gives every process one thread, `default` leaves torch's own choice (one per core in
every process: oversubscribed for W > 1).
`--group` is KB_INGEST_GROUP for the run: an archive's pages go out as tasks of that many
pages, so W processes can only share the work if there are at least W tasks.
It runs in a database of its own (kb_bench_workers): it empties its collections first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import _harness  # noqa: E402 - bench/ is on the path when this runs as a script

_harness.use_database("kb_bench_workers")
ROOT = _harness.ROOT

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
BIN = Path(sys.executable).parent


def build_zip(pages: list[Path], root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for page in pages:
            archive.write(page, page.relative_to(root).as_posix())
    return buffer.getvalue()


def threads_each(threads: str, workers: int) -> int | str:
    if threads == "one":
        return 1
    if threads == "auto":
        return max(1, (os.cpu_count() or 1) // workers)
    return "torch default"


def start_worker(concurrency: int, threads: str, queue: str, log: Path) -> subprocess.Popen:
    from django.conf import settings
    from django.db import connection

    env = {**os.environ, "KB_DB_NAME": connection.settings_dict["NAME"], "KB_QUEUE": queue,
           "KB_MEDIA_ROOT": str(settings.MEDIA_ROOT), "KB_EMBEDDED_DB_KEEP": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if threads != "default":
        env["OMP_NUM_THREADS"] = str(threads_each(threads, concurrency))
    cmd = [str(BIN / "celery"), "-A", "kb", "worker", "-Q", queue, "--concurrency", str(concurrency),
           "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
           "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc


def wait_done(collection, *, timeout: float) -> float:
    """Seconds until no document of the collection is queued or processing (polled every 0.2 s)."""
    from kb.models import Document

    started = time.perf_counter()
    busy = (Document.Status.QUEUED, Document.Status.PROCESSING)
    while Document.objects.filter(collection=collection, status__in=busy).exists():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"documents still busy after {timeout:.0f} s")
        time.sleep(0.2)
    return time.perf_counter() - started


def tree_usage(proc: subprocess.Popen) -> tuple[float, float]:
    """CPU seconds and summed RSS (MB) of a worker and its pool processes."""
    import psutil

    root = psutil.Process(proc.pid)
    cpu = rss = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            times = p.cpu_times()
            cpu += times.user + times.system
            rss += p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return cpu, rss


def one_run(*, workers: int, data: bytes, warm: bytes, group: int, threads: str, user, logs: Path) -> dict:
    from django.conf import settings

    from kb.models import Collection, Document
    from kb.services.collections import collection_create
    from kb.services.documents import archive_upload

    name = f"bench: workers {workers}"
    Collection.objects.filter(name__in=[name, f"{name} (warm-up)"]).delete()
    queue = f"kb-bench-{uuid.uuid4().hex[:8]}"
    log = logs / f"worker-{workers}.log"
    proc = start_worker(workers, threads, queue, log)
    try:
        settings.CELERY_TASK_DEFAULT_QUEUE = queue
        from kb.celery import app

        app.conf.task_default_queue = queue
        # Warm-up: one page per task, W tasks, so each pool process loads its model now.
        settings.KB_INGEST_GROUP = 1
        warm_collection = collection_create(user=user, name=f"{name} (warm-up)")
        archive_upload(user=user, collection=warm_collection, file=io.BytesIO(warm), name="warm.zip")
        wait_done(warm_collection, timeout=600)
        cpu_before, _ = tree_usage(proc)

        settings.KB_INGEST_GROUP = group
        collection = collection_create(user=user, name=name)
        archive_upload(user=user, collection=collection, file=io.BytesIO(data), name="manual.zip")
        wall = wait_done(collection, timeout=3600)
        cpu_after, rss = tree_usage(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    docs = Document.objects.filter(collection=collection)
    chunks = sum(docs.values_list("chunk_count", flat=True))
    return {
        "workers": workers, "threads_per_process": threads_each(threads, workers), "documents": docs.count(),
        "failed": docs.filter(status=Document.Status.FAILED).count(), "chunks": chunks, "wall_s": round(wall, 1),
        "docs_per_s": round(docs.count() / wall, 2), "chunks_per_s": round(chunks / wall, 1),
        "worker_cpu_s": round(cpu_after - cpu_before, 1), "worker_rss_mb": round(rss),
        "load_average_end": round(os.getloadavg()[0], 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=MANUAL)
    parser.add_argument("--every", type=int, default=10, help="every K-th page (sorted): a spread-out sample")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--group", type=int, default=16, help="KB_INGEST_GROUP for the run (pages per task)")
    parser.add_argument("--threads", choices=["auto", "one", "default"], default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over --workers (medians of wall)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.path.is_dir():
        sys.exit(f"{args.path} is missing: sudo apt-get install postgresql-doc-15, or pass --path DIR")

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    settings.MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="kb-bench-media-"))
    logs = Path(tempfile.mkdtemp(prefix="kb-bench-workers-"))

    from kb.access import system_user

    pages = sorted(p for p in args.path.rglob("*.html"))[:: args.every]
    data = build_zip(pages, args.path)
    user = system_user()
    rounds: list[list[dict]] = []
    for _ in range(args.repeats):
        runs = []
        for workers in args.workers:
            warm = build_zip(pages[:workers], args.path)
            runs.append(one_run(workers=workers, data=data, warm=warm, group=args.group, threads=args.threads,
                                user=user, logs=logs))  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
        rounds.append(runs)
    summary = []
    base = statistics.median(r[0]["wall_s"] for r in rounds)
    for i, workers in enumerate(args.workers):
        wall = statistics.median(r[i]["wall_s"] for r in rounds)
        last = rounds[-1][i]
        rates = {"docs_per_s": round(last["documents"] / wall, 2), "chunks_per_s": round(last["chunks"] / wall, 1),
                 "worker_cpu_s": statistics.median(r[i]["worker_cpu_s"] for r in rounds),
                 "cpu_s_per_100_chunks": round(100 * statistics.median(r[i]["worker_cpu_s"] for r in rounds)
                                               / max(1, last["chunks"]), 2)}  # fmt: skip
        summary.append({**last, **rates, "wall_s": wall, "wall_s_rounds": [r[i]["wall_s"] for r in rounds],
                        "speedup": round(base / wall, 2), "efficiency": round(base / wall / workers, 2)})  # fmt: skip
    cpu = _harness.cpu_name()
    result = {"cpu": cpu, "cores": os.cpu_count(), "pages": len(pages), "group": args.group, "runs": summary}
    print(f"\n{cpu}; {len(pages)} pages, {args.group} pages per task")
    print("| workers | threads each | docs | chunks | wall | docs/s | chunks/s | speed-up | efficiency "
          "| worker CPU s | CPU s / 100 chunks | RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['workers']} | {r['threads_per_process']} | {r['documents']} | {r['chunks']} | {r['wall_s']} s | "
              f"{r['docs_per_s']} | {r['chunks_per_s']} | {r['speedup']} | {r['efficiency']} | "
              f"{r['worker_cpu_s']} | {r['cpu_s_per_100_chunks']} | {r['worker_rss_mb']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
