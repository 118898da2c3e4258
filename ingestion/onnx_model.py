"""A sentence-transformers model run by ONNX Runtime: exported once, optionally int8-quantised, cached.

sentence-transformers' own ONNX backend needs optimum-onnx, which pins transformers < 4.58
and huggingface_hub < 1 (kb runs transformers 5 and huggingface_hub 2), so kb exports with
torch's own exporter and quantises with ONNX Runtime's `quantize_dynamic`. The model is
read from its local folder only; the exported files go to a cache folder (KB_EMBED_CACHE,
by default var/embed-cache), never into the package, and a file lock keeps two workers
starting at once from exporting over each other.

What runs here is what sentence-transformers runs for a Transformer → Pooling → Normalize
model: the model's tokenizer (truncating at the window, padding to the batch's longest),
the transformer, then mean (or [CLS]) pooling over the attention mask.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import logging
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

# Bump when the export or quantisation recipe changes, so caches made by an older kb are not reused.
RECIPE = 1
OPSET = 17

# Dynamic int8 quantisation of the MatMul weights: per output channel, 7-bit ("reduce range").
# Measured on 600 real chunks of the Python manual (bench/embed_backends.py, docs/benchmarks.md),
# mean cosine to the fp32 model: quantize_dynamic's defaults (per tensor) 0.945, per channel
# 0.993-0.994. Per channel is what keeps quality. 7-bit weights cost 0.001 here, on a CPU with
# VNNI, and keep the same file safe on one without: there ONNX Runtime multiplies u8 by s8
# with VPMADDUBSW, whose 16-bit sums saturate with full 8-bit weights. The word embedding
# table (a Gather: a lookup, no arithmetic to speed up) stays fp32; quantising it too would
# only shrink the file (59 → 23 MB).
QUANTIZATION = {"per_channel": True, "reduce_range": True, "op_types_to_quantize": ["MatMul"]}


def check_installed(backend: str) -> None:
    """Fail at start-up, with the fix, when an ONNX backend is chosen but ONNX Runtime is missing."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImproperlyConfigured(
            f"KB_EMBED_BACKEND={backend} needs {' and '.join(missing)}: pip install -e '.[onnx]' "
            "(or set KB_EMBED_BACKEND=torch)."
        )


def export_folder(location: str, cache: Path) -> Path:
    """The cache folder for this model: named after it and a digest of its files' identity and the recipe."""
    folder = Path(location)
    identity = [str(folder.resolve()), f"recipe {RECIPE}"]
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            stat = path.stat()
            identity.append(f"{name} {stat.st_size} {stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:12]
    return cache / f"{folder.name}-{digest}"


def ensure_exported(location: str, cache: Path, *, quantized: bool) -> Path:
    """The path of the model's ONNX file (int8 when `quantized`), exporting it first if the cache lacks it."""
    if not Path(location, "config.json").is_file():
        raise ImproperlyConfigured(
            f"KB_EMBED_BACKEND=onnx needs the model as a local folder; {location} is not one "
            "(set KB_EMBED_BACKEND=torch, or KB_EMBED_MODEL to a folder)."
        )
    folder = export_folder(location, cache)
    fp32 = folder / "model.onnx"
    int8 = folder / "model_int8.onnx"
    target = int8 if quantized else fp32
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits here, then finds the file made
        try:
            if not fp32.is_file():
                logger.info("exporting %s to ONNX in %s (once)", location, folder)
                _export(location, fp32)
            if quantized and not int8.is_file():
                logger.info("quantising %s to int8 (once)", fp32)
                _quantize(fp32, int8)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _export(location: str, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime fuses and quantises.
    model = AutoModel.from_pretrained(location, local_files_only=True, attn_implementation="eager").eval()
    sample = tokenizer(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # The TorchScript exporter (dynamo=False: the dynamo one needs onnxscript) warns that it is
    # deprecated and about traced Python conditions; the test against fp32 vectors is the check.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(model),
            tuple(sample[n] for n in names),
            str(partial),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(partial, target)


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    logging.disable(logging.INFO)  # quantize_dynamic logs a line per tensor on the root logger
    try:
        quantize_dynamic(str(source), str(partial), weight_type=QuantType.QInt8, **QUANTIZATION)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(partial, target)


def pooling_mode(location: str) -> str:
    """'mean' or 'cls', from the model folder's sentence-transformers modules."""
    folder = Path(location)
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean"  # a bare transformers folder: sentence-transformers would mean-pool it too
    listed = json.loads(modules.read_text())
    kinds = [m.get("type", "") for m in listed]
    pooling = next((m for m in listed if m.get("type", "").endswith("Pooling")), None)
    supported = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                 "sentence_transformers.models.Normalize"}  # fmt: skip
    if not set(kinds) <= supported or pooling is None:
        raise ImproperlyConfigured(
            f"KB_EMBED_BACKEND=onnx runs Transformer → Pooling (→ Normalize) models; {location} has "
            f"{kinds}. Set KB_EMBED_BACKEND=torch."
        )
    config = json.loads((folder / pooling["path"] / "config.json").read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ImproperlyConfigured(f"KB_EMBED_BACKEND=onnx supports mean or [CLS] pooling; {location} uses {config}.")


# Set where the model shares the cores with other work (a web process checking the sentences of
# many answers at once): its batches then run on the single text's thread count too. Per CPU
# second that embeds 1.42 x the sentences of one call each, against 1.22 x for batches spread
# over every core (bench/sentence_checks.py, docs/benchmarks.md "Hundreds of people at once").
_narrow: contextvars.ContextVar[bool] = contextvars.ContextVar("kb_onnx_narrow", default=False)


@contextmanager
def on_single_threads():
    """Within the block, batches run on the thread count of a single text (KB_QUERY_EMBED_THREADS)."""
    token = _narrow.set(True)
    try:
        yield
    finally:
        _narrow.reset(token)


class OnnxModel:
    """Unit vectors from an exported model file; one session per thread count, made on first use."""

    def __init__(self, location: str, model_file: Path, *, max_tokens: int, batch_threads: int, single_threads: int):
        from transformers import AutoTokenizer

        self.model_file = model_file
        self.max_tokens = max_tokens
        self.pooling = pooling_mode(location)
        self._tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        self._threads = {"batch": batch_threads, "single": single_threads}
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    def _session(self, threads: int):
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self._sessions[threads] = ort.InferenceSession(
                    str(self.model_file), options, providers=["CPUExecutionProvider"]
                )
            return self._sessions[threads]

    def embed(self, texts: list[str]) -> np.ndarray:
        # One text is a question (or a one-chunk page): like the torch path in kb.retrieval,
        # it runs on KB_QUERY_EMBED_THREADS threads, which beats several on a busy machine.
        session = self._session(self._threads["single" if len(texts) == 1 or _narrow.get() else "batch"])
        encoded = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np"
        )
        feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
        hidden = session.run(None, feeds)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)
