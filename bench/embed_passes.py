"""What a task's one embedding pass is worth against embedding its pages as they are parsed.

    .venv/bin/python bench/embed_passes.py [--every 10] [--pages 32] [--repeats 2]

Parses and chunks PAGES pages of the PostgreSQL manual (every K-th, as bench/ingest_workers.py
picks them) with kb's own pipeline, then embeds their texts four ways, alternating, in this one
process: one pass over all of them (what an `ingest_documents` task does), one pass per page
(what parsing the next page while this one embeds would need), and passes over windows of at
least 32 and 64 texts. Prints the CPU seconds (this process) and wall of each, and the parse's.
No database: the pure pipeline only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _harness  # noqa: F401 - puts the repository on the path

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--pages", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not MANUAL.is_dir():
        sys.exit(f"{MANUAL} is missing: sudo apt-get install postgresql-doc-15")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import django

    django.setup()
    from ingestion import embeddings, pipeline

    embedder = embeddings.get_embedder()
    pages = sorted(MANUAL.rglob("*.html"))[:: args.every][: args.pages]
    cpu, wall = time.process_time(), time.perf_counter()
    per_page = []
    for page in pages:
        parsed = pipeline.parse_and_chunk(page, source_path=page.name, embedder=embedder)
        per_page.append([
            pipeline.embedding_text(title=parsed.title, heading_path=c.heading_path, text=c.text, embedder=embedder)
            for c in parsed.chunks
        ])  # fmt: skip
    texts = [t for page in per_page for t in page]
    print(f"{_harness.cpu_name()}, backend {embedder.backend}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"parse + chunk: {len(pages)} pages, {len(texts)} texts, CPU {time.process_time() - cpu:.1f} s, "
          f"wall {time.perf_counter() - wall:.1f} s")  # fmt: skip
    pipeline.embed_texts(per_page[0], embedder=embedder)  # the model loads outside the clock

    def windows(least: int) -> list[list[str]]:
        out, current = [], []
        for page in per_page:
            current += page
            if len(current) >= least:
                out, current = [*out, current], []
        return [*out, current] if current else out

    ways = {"one pass": [texts], "per page": per_page, "windows >= 32": windows(32), "windows >= 64": windows(64)}
    for _ in range(args.repeats):
        for label, passes in ways.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for texts_of_pass in passes:
                pipeline.embed_texts(texts_of_pass, embedder=embedder)
            print(f"{label}: {len(passes)} passes, CPU {time.process_time() - cpu:.1f} s, "
                  f"wall {time.perf_counter() - wall:.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
