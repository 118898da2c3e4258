"""ONNX export and int8 quantisation variants against the bare fp32 model, on real chunks.

    .venv/bin/python bench/embed_backends.py [--path DIR] [--texts N] [--repeats R] [--json OUT]

Chunks the files under --path (default: var/pydoc, the Python manual evaluation corpus) as kb
does, keeps an evenly spread sample of N embedding texts (title and heading prefix included),
and embeds them with:
- the bare model: sentence-transformers `encode`, torch fp32 (the reference);
- the same `encode` under torch's CPU autocast to bfloat16 (kb's torch-bf16 backend), and
  the model cast to bfloat16 outright;
- ONNX fp32, and int8 variants of `onnxruntime.quantization.quantize_dynamic`
  (per-tensor / per-channel weights, full 8-bit / 7-bit "reduce range" weights, MatMul only
  or with the embedding Gather too);
each through kb's ONNX runner (ingestion/onnx_model.OnnxModel: same tokenizer, pooling and
batching). It reports each variant's cosine to the fp32 vectors (mean, 1st percentile, min)
and its word pieces per second, timed in rounds that alternate the models (R rounds; medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MATMUL = {"op_types_to_quantize": ["MatMul"]}
VARIANTS = {
    "int8 defaults (per-tensor, 8-bit)": {"per_channel": False, "reduce_range": False},
    "int8 per-channel, 8-bit": {"per_channel": True, "reduce_range": False},
    "int8 per-tensor, 7-bit": {"per_channel": False, "reduce_range": True},
    "int8 per-channel, 7-bit (MatMul only)": {"per_channel": True, "reduce_range": True, **MATMUL},
    "int8 per-channel, 7-bit (MatMul + Gather)": {
        "per_channel": True, "reduce_range": True, "op_types_to_quantize": ["MatMul", "Gather"],
    },
}  # fmt: skip


def sample_texts(path: Path, count: int) -> list[str]:
    from ingestion.embeddings import get_embedder
    from ingestion.pipeline import embedding_text, parse_and_chunk

    embedder = get_embedder()
    texts = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        parsed = parse_and_chunk(file, source_path=str(file.relative_to(path)), embedder=embedder)
        texts += [embedding_text(title=parsed.title, heading_path=c.heading_path, text=c.text) for c in parsed.chunks]
    step = max(1, len(texts) // count)
    return texts[::step][:count]


def batches(texts: list[str], size: int):
    for first in range(0, len(texts), size):
        yield texts[first : first + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=ROOT / "var" / "pydoc")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (0: cosines only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="variant names to keep (substring match)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import django

    django.setup()
    import numpy as np
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    from ingestion.embeddings import cpu_has_amx_bf16, get_embedder, model_location
    from ingestion.onnx_model import OnnxModel, _export

    location = model_location()
    embedder = get_embedder()
    texts = sample_texts(args.path, args.texts)
    # Sorted longest first, as kb.pipeline.embed_texts batches them.
    texts.sort(key=lambda t: -len(embedder.tokenizer.encode(t).ids))
    word_pieces = sum(min(len(e.ids), embedder.max_tokens) for e in embedder.tokenizer.encode_batch(texts))

    bare = SentenceTransformer(location, device="cpu", local_files_only=True)
    bare.max_seq_length = embedder.max_tokens
    reference = bare.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)

    work = Path(tempfile.mkdtemp(prefix="kb-onnx-variants-"))
    fp32 = work / "model.onnx"
    _export(location, fp32)
    files = {"onnx fp32": fp32}
    for name, options in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        target = work / f"variant{len(files)}.onnx"
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, **options)
        files[name] = target

    models = {
        name: OnnxModel(location, file, max_tokens=embedder.max_tokens, batch_threads=0, single_threads=1)
        for name, file in files.items()
    }
    result = {"texts": len(texts), "word_pieces": word_pieces, "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(), "load_start": os.getloadavg()[0], "variants": {}}  # fmt: skip
    for name, model in models.items():
        vectors = np.concatenate([model.embed(b) for b in batches(texts, args.batch_size)])
        cosines = (vectors * reference).sum(axis=1)
        result["variants"][name] = {
            "file_mb": round(files[name].stat().st_size / 1e6, 1),
            "cosine_mean": round(float(cosines.mean()), 4),
            "cosine_p1": round(float(np.percentile(cosines, 1)), 4),
            "cosine_min": round(float(cosines.min()), 4),
            "seconds": [],
        }

    def autocast_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bare.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)

    cast = SentenceTransformer(
        location, device="cpu", local_files_only=True, model_kwargs={"torch_dtype": torch.bfloat16}
    )
    cast.max_seq_length = embedder.max_tokens
    torch_variants = {
        "torch bf16 autocast (kb torch-bf16)": autocast_bf16,
        "torch, model cast to bf16": lambda: cast.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
    }
    for name, run in torch_variants.items():
        cosines = (np.asarray(run(), dtype=np.float32) * reference).sum(axis=1)
        result["variants"][name] = {
            "cosine_mean": round(float(cosines.mean()), 5),
            "cosine_p1": round(float(np.percentile(cosines, 1)), 5),
            "cosine_min": round(float(cosines.min()), 5),
            "seconds": [],
        }
    result["variants"]["bare torch fp32"] = {"seconds": []}
    result["amx_bf16"] = cpu_has_amx_bf16()

    runners = {"bare torch fp32": lambda: bare.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)}
    runners.update(torch_variants)
    for name, model in models.items():
        runners[name] = lambda model=model: [model.embed(b) for b in batches(texts, args.batch_size)]
    for _ in range(args.repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            result["variants"][name]["seconds"].append(round(time.perf_counter() - started, 2))
    base = statistics.median(result["variants"]["bare torch fp32"]["seconds"] or [0])
    for figures in result["variants"].values() if args.repeats else []:
        median = statistics.median(figures["seconds"])
        figures["word_pieces_per_s"] = round(word_pieces / median)
        figures["speed_vs_bare"] = round(base / median, 2)
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
