"""Ingestion benchmark: kb_ingest --inline on a folder (the PostgreSQL manual by default),
against the bare sentence-transformers model embedding the very same texts.

    KB_DB_NAME=kb_bench .venv/bin/python bench/ingest.py [--path DIR] [--limit N] [--json OUT]

Reports pages, chunks, word pieces embedded, wall time split into parse / chunk / embed /
store (and the rest: hashing, storing the upload, status updates), peak RSS, and two ratios
against the bare fp32 model (sentence-transformers `encode`, torch): end-to-end ÷ bare
embedding, and kb's word pieces per second ÷ the bare model's. kb runs with the configured
KB_EMBED_BACKEND; when that is not torch fp32, the same texts also go through that model
bare (`encode` under bf16 autocast, or kb's ONNX runner alone), so the run shows how much of
the gain is the model and how much kb's pipeline keeps. --repeats N times the bare legs N
times, alternating (medians). The timings come from wrappers around the real functions
(nothing is replaced), so the run is the real pipeline. The collection it fills ("bench:
<folder name>") is emptied first; use a database of its own (KB_DB_NAME) to leave yours alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
os.environ.setdefault("KB_DB_NAME", "kb_bench")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")


def _timed(module, name: str, bucket: str, totals: dict, *, capture=None):
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            result = real(*args, **kwargs)
        finally:
            totals[bucket] += time.perf_counter() - started
        if capture is not None:
            capture(args, kwargs, result)
        return result

    setattr(module, name, wrapper)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_rates(texts: list[str], embedder, word_pieces: int, wall: float, *, repeats: int) -> dict:
    """The same texts through the bare fp32 model and, when kb runs another backend, through that one bare.

    "Bare" is the model alone: sentence-transformers `encode` (fp32 torch, which sorts by
    length itself) or kb's ONNX runner called on length-sorted batches, with none of kb's
    parsing, chunking, storing or bookkeeping. Rounds alternate the two; medians are quoted.
    """
    import statistics

    from django.conf import settings
    from sentence_transformers import SentenceTransformer

    from ingestion.embeddings import model_location

    size = settings.KB_EMBED_BATCH_SIZE
    model = SentenceTransformer(model_location(), device="cpu", local_files_only=True)
    model.max_seq_length = embedder.max_tokens
    model.encode(["warm up"])
    runners = {"bare": lambda: model.encode(texts, batch_size=size, normalize_embeddings=True)}
    backend = getattr(embedder, "backend", "torch")
    if backend == "torch-bf16":
        import torch

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.encode(texts, batch_size=size, normalize_embeddings=True)

        runners["bare_backend"] = bf16
    elif backend != "torch":
        onnx = embedder._loaded()  # the very model kb ran, already loaded
        lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(texts)]
        ordered = [texts[i] for i in sorted(range(len(texts)), key=lambda i: -lengths[i])]
        runners["bare_backend"] = lambda: [onnx.embed(ordered[i : i + size]) for i in range(0, len(ordered), size)]
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, repeats)):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    bare = statistics.median(seconds["bare"])
    figures = {
        "bare_embed_s": round(bare, 1),
        "bare_embed_s_rounds": [round(s, 1) for s in seconds["bare"]],
        "bare_word_pieces_per_s": round(word_pieces / bare),
        "ratio_end_to_end_over_bare": round(wall / bare, 2),
        "ratio_kb_rate_over_bare_rate": round(bare / wall, 2),
    }
    if "bare_backend" in seconds:
        own = statistics.median(seconds["bare_backend"])
        figures.update(
            bare_backend_embed_s=round(own, 1),
            bare_backend_embed_s_rounds=[round(s, 1) for s in seconds["bare_backend"]],
            bare_backend_word_pieces_per_s=round(word_pieces / own),
            ratio_bare_backend_rate_over_bare_rate=round(bare / own, 2),
            ratio_end_to_end_over_bare_backend=round(wall / own, 2),
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=MANUAL)
    parser.add_argument("--limit", type=int, default=0, help="only the first N files (sorted), for a quick run")
    parser.add_argument("--every", type=int, default=1, help="only every K-th file (sorted): a spread-out sample")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-bare", action="store_true", help="skip the bare-model comparison")
    parser.add_argument("--repeats", type=int, default=1, help="bare legs: rounds, alternating the models (medians)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    settings.MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="kb-bench-media-"))

    from ingestion import chunking, pipeline, processing, readers
    from ingestion.embeddings import get_embedder
    from kb.models import Collection, Document

    source = args.path
    if args.limit or args.every > 1:
        staged = Path(tempfile.mkdtemp(prefix="kb-bench-src-"))
        chosen = sorted(p for p in source.rglob("*") if p.is_file())[:: args.every]
        for file in chosen[: args.limit or None]:
            target = staged / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
        source = staged
    pages = sum(1 for p in source.rglob("*") if p.is_file())
    name = f"bench: {args.path.name} (every {args.every}, first {args.limit or 'all'})"
    Collection.objects.filter(name=name).delete()

    totals: dict[str, float] = defaultdict(float)
    embedded: list[str] = []
    _timed(readers, "read", "parse", totals)
    _timed(chunking, "split_sections", "chunk", totals)
    _timed(pipeline, "embed_texts", "embed", totals, capture=lambda a, k, r: embedded.extend(a[0]))
    _timed(processing, "document_replace_chunks", "store", totals)

    embedder = get_embedder()
    loaded = time.perf_counter()
    embedder.embed(["warm up"])  # load the model outside the timed run, as a long-lived worker has it
    load_s = time.perf_counter() - loaded

    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    call_command("kb_ingest", str(source), "--collection", name, "--create", "--inline", "--json",
                 stdout=open(os.devnull, "w"))  # fmt: skip
    wall = time.perf_counter() - started
    rss_kb = peak_rss_mb()

    documents = Document.objects.filter(collection__name=name)
    chunks = sum(documents.values_list("chunk_count", flat=True))
    failed = documents.filter(status=Document.Status.FAILED).count()
    lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(embedded, add_special_tokens=True)]
    word_pieces = sum(lengths)
    truncated = sum(1 for n in lengths if n > embedder.max_tokens)

    result = {
        "source": str(args.path), "pages": pages, "documents": documents.count(), "failed": failed,
        "chunks": chunks, "texts_embedded": len(embedded), "word_pieces": word_pieces,
        "texts_over_window": truncated, "batch_size": settings.KB_EMBED_BATCH_SIZE,
        "backend": getattr(embedder, "backend", "torch"), "load_average_start": round(load_start, 1),
        "model_load_s": round(load_s, 1), "wall_s": round(wall, 1),
        **{f"{k}_s": round(totals[k], 1) for k in ("parse", "chunk", "embed", "store")},
        "other_s": round(wall - sum(totals[k] for k in ("parse", "chunk", "embed", "store")), 1),
        "kb_word_pieces_per_s": round(word_pieces / wall),
        "peak_rss_mb_after_kb": round(rss_kb),
    }  # fmt: skip
    # The chunk step runs inside parse_and_chunk, after read: parse is the reader alone.

    if not args.skip_bare:
        result.update(bare_rates(embedded, embedder, word_pieces, wall, repeats=args.repeats))
    result["peak_rss_mb"] = round(peak_rss_mb())
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
