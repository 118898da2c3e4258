"""What checking an answer's sentences costs the web process, by how they reach the model (issue 16).

    .venv/bin/python bench/sentence_checks.py [--sentences 300] [--repeats 5]

A web process streaming many answers checks a sentence of each every moment: each is embedded
by the question embedder (kb.verification.embed). This measures the same sentences (the
concurrency stand-in's prose, bench/model_standin.py, all different) embedded three ways, in
turns within one run, and prints the median of --repeats rounds for each:

- one call per sentence (each answer's check alone, as before kb.verification._Batcher);
- batches spread over every core (ONNX Runtime's default thread count for a batch);
- batches on the single text's thread count (KB_QUERY_EMBED_THREADS), as the batcher runs them.

Sentences per wall second and per CPU second (this process's, all threads). Per CPU second is
what matters under load: the other answers' streams need the cores a batch does not use.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time

import _harness

_harness.use_database("kb_bench_checks")

import django  # noqa: E402

django.setup()

from model_standin import answer_words  # noqa: E402

from ingestion import embeddings, pipeline  # noqa: E402
from ingestion.onnx_model import on_single_threads  # noqa: E402


def sentences(count: int) -> list[str]:
    text = "".join(w for seed in range(1 + count // 25) for w in answer_words(400, seed=seed))
    found = list(dict.fromkeys(s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()))
    if len(found) < count:
        sys.exit(f"sentence_checks: only {len(found)} different sentences; ask for fewer with --sentences")
    return found[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16, help="sentences per batched call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.sentences < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--sentences, --batch and --repeats must be at least 1")
    embedder = embeddings.get_embedder(None, questions=True)
    texts = sentences(args.sentences)
    pipeline.embed_texts(texts[:4], embedder=embedder)  # the model loads outside the timings

    def one_by_one():
        for text in texts:
            pipeline.embed_texts([text], embedder=embedder)

    def batched():
        for first in range(0, len(texts), args.batch):
            pipeline.embed_texts(texts[first : first + args.batch], embedder=embedder)

    def batched_single_threads():
        with on_single_threads():
            batched()

    ways = {
        "one call per sentence": one_by_one,
        f"batches of {args.batch}, every core": batched,
        f"batches of {args.batch}, single-text threads": batched_single_threads,
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    order = list(ways)
    rng = random.Random(3)
    for _ in range(args.repeats):
        rng.shuffle(order)  # in turns, each round in another order: the machine's noise falls on all
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            ways[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            figures[name].append((len(texts) / wall, len(texts) / cpu))
    print(f"{_harness.cpu_name()}; backend {type(embedder).__name__} {getattr(embedder, 'backend', '')}, "
          f"{len(texts)} sentences, median of {args.repeats} rounds")  # fmt: skip
    base = statistics.median(c for _, c in figures["one call per sentence"])
    for name, rows in figures.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"  {name:40} {wall:7.0f} /s wall  {cpu:7.0f} /CPU s  ({cpu / base:.2f} x per CPU s)")


if __name__ == "__main__":
    main()
