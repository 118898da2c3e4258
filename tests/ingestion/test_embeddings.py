"""The embedder: the model's own tokenizer and window, offline loading, the TEI client, the cache, the ONNX backends."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from ingestion import embeddings, onnx_model
from ingestion.embeddings import LocalEmbedder, TEIEmbedder, count_tokens, get_embedder, model_location
from ingestion.errors import EmbedderUnavailable
from tests.corpus import BACKUPS


def test_default_model_reads_256_word_pieces(embedder):
    assert embedder.max_tokens == 256
    assert embedder.dim == 384


def test_count_tokens_counts_special_tokens_and_never_truncates(embedder):
    assert count_tokens("hello world", embedder=embedder) == 4  # [CLS] hello world [SEP]
    # The tokenizer file ships with truncation at 128; a count capped there would hide long chunks.
    assert count_tokens("word " * 1000, embedder=embedder) == 1002


def test_get_embedder_is_cached_per_process(embedder):
    assert get_embedder() is get_embedder() is embedder


def test_loading_the_default_model_opens_no_connection(monkeypatch):
    def refuse(self, address):
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))
    fresh = LocalEmbedder(model_location(), dim=384, batch_size=4)

    assert len(fresh.embed(["offline"])[0]) == 384


def test_a_configured_url_selects_the_tei_server(settings, monkeypatch):
    monkeypatch.setattr(embeddings, "_registry", {})  # restored after the test
    settings.KB_EMBED_URL = "http://tei.internal:8080"

    chosen = get_embedder()

    assert isinstance(chosen, TEIEmbedder)
    assert chosen.max_tokens == 256  # window and tokenizer of the model named by KB_EMBED_MODEL (the default)


class _FakeTEI(BaseHTTPRequestHandler):
    requests: list = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if type(self).status == 200:
            payload = json.dumps([[0.0, 3.0, 4.0] for _ in body["inputs"]]).encode()
        else:
            payload = json.dumps(
                {"error": "Input validation error: inputs too long", "error_type": "Validation"}
            ).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def tei_server():
    _FakeTEI.requests = []
    _FakeTEI.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTEI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_tei_embedder_posts_to_embed_without_truncation(tei_server):
    tei = TEIEmbedder(tei_server, location=model_location(), dim=3, timeout=5)

    assert tei.embed(["a", "b"]) == [[0.0, 3.0, 4.0], [0.0, 3.0, 4.0]]
    assert _FakeTEI.requests == [("/embed", {"inputs": ["a", "b"], "normalize": True, "truncate": False})]


def test_tei_errors_become_embedder_unavailable(tei_server):
    _FakeTEI.status = 422
    tei = TEIEmbedder(tei_server, location=model_location(), dim=3, timeout=5)

    with pytest.raises(EmbedderUnavailable, match="422"):
        tei.embed(["a"])


# --- ONNX Runtime backends (KB_EMBED_BACKEND) -------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="session")
def real_texts(embedder) -> list[str]:
    """Chunks of kb's own documentation, prefixed as ingestion embeds them: real prose, code and tables."""
    from ingestion.pipeline import embedding_text, parse_and_chunk

    texts = []
    for name in ("README.md", "docs/benchmarks.md", "docs/security.md"):
        parsed = parse_and_chunk(ROOT / name, source_path=name, embedder=embedder)
        texts += [embedding_text(title=parsed.title, heading_path=c.heading_path, text=c.text) for c in parsed.chunks]
    return texts


def onnx_embedder(backend: str, cache: Path) -> LocalEmbedder:
    return LocalEmbedder(model_location(), dim=384, batch_size=32, backend=backend, cache=cache)


@pytest.fixture(scope="session")
def fp32_vectors(real_texts, onnx_cache):
    return np.asarray(onnx_embedder("torch", onnx_cache).embed(real_texts))


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_vectors_have_the_models_dimension_and_unit_length(backend, onnx_cache):
    vectors = np.asarray(onnx_embedder(backend, onnx_cache).embed(["restore a backup", "a longer text " * 40]))

    assert vectors.shape == (2, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize(
    ("backend", "mean_at_least", "min_at_least"),
    # Thresholds a little under what was measured (int8 on 600 chunks of the Python manual:
    # mean 0.993, lowest 0.982; quantize_dynamic's defaults gave a mean of 0.945), so a
    # changed export or quantisation recipe that costs quality fails here.
    [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.985, 0.97)],
)
def test_onnx_vectors_stay_close_to_the_fp32_model_on_real_chunks(
    backend, mean_at_least, min_at_least, onnx_cache, real_texts, fp32_vectors
):
    vectors = np.asarray(onnx_embedder(backend, onnx_cache).embed(real_texts))
    cosines = (vectors * fp32_vectors).sum(axis=1)

    assert len(real_texts) > 50
    assert cosines.mean() >= mean_at_least
    assert cosines.min() >= min_at_least


def test_bf16_vectors_stay_within_1e_4_cosine_of_fp32_on_real_chunks(onnx_cache, real_texts, fp32_vectors):
    # Measured: mean 0.99999, lowest 0.99997 on 600 chunks of the Python manual. Casting
    # the whole model to bfloat16 instead of autocasting its matrix products gives a lowest
    # of 0.9964, which fails here.
    # 64 texts: on a CPU without bf16 arithmetic (AVX2) torch emulates it, many times slower.
    vectors = np.asarray(onnx_embedder("torch-bf16", onnx_cache).embed(real_texts[:64]))
    cosines = (vectors * fp32_vectors[:64]).sum(axis=1)

    assert vectors.shape == (64, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(len(vectors)), abs=1e-5)
    assert cosines.mean() >= 0.9999
    assert cosines.min() >= 0.9995


@pytest.mark.parametrize(("amx", "expected"), [(True, "torch-bf16"), (False, "torch")])
def test_the_auto_backend_is_bf16_only_on_a_cpu_with_amx(amx, expected, fresh_registry, monkeypatch):
    monkeypatch.setattr(embeddings, "cpu_has_amx_bf16", lambda: amx)
    fresh_registry.KB_EMBED_BACKEND = "auto"

    assert get_embedder().backend == expected
    assert get_embedder(questions=True).backend == "onnx"  # fp32 questions for either


def test_the_export_is_cached_and_reused(onnx_cache, monkeypatch):
    onnx_embedder("onnx-int8", onnx_cache).embed(["made once"])  # exports, unless an earlier test did

    def refuse(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_model, "_export", refuse)
    monkeypatch.setattr(onnx_model, "_quantize", refuse)
    again = onnx_embedder("onnx-int8", onnx_cache)

    assert len(again.embed(["loaded from the cache"])[0]) == 384
    assert again._model.model_file.parent.parent == onnx_cache


def test_two_workers_starting_at_once_export_once(tmp_path, monkeypatch):
    exports = []
    real_export = onnx_model._export

    def counted(location, target):
        exports.append(target)
        real_export(location, target)

    monkeypatch.setattr(onnx_model, "_export", counted)
    found = []
    workers = [
        threading.Thread(
            target=lambda: found.append(onnx_model.ensure_exported(model_location(), tmp_path, quantized=False))
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(exports) == 1
    assert found[0] == found[1] and found[0].is_file()
    assert [p.name for p in found[0].parent.iterdir() if p.suffix == ".tmp"] == []


def test_an_unknown_backend_is_refused():
    with pytest.raises(ImproperlyConfigured, match="KB_EMBED_BACKEND"):
        LocalEmbedder(model_location(), dim=384, batch_size=4, backend="tensorrt")


@pytest.mark.django_db
def test_documents_and_questions_go_through_the_configured_backend_end_to_end(settings, onnx_cache, monkeypatch):
    from kb import retrieval
    from tests.factories import add_document, make_collection, make_user

    settings.KB_EMBED_BACKEND = "onnx-int8"
    settings.KB_EMBED_CACHE = onnx_cache
    monkeypatch.setattr(embeddings, "_registry", {})  # the next get_embedder() reads the settings above
    reader = make_user()
    ops = make_collection("ops", viewer=[reader])
    add_document(ops, "backups.md", BACKUPS)

    assert get_embedder().backend == "onnx-int8"
    hits = retrieval.search(user=reader, query="how do I restore a backup", collection_ids=[ops.pk]).hits
    assert hits[0].chunk.heading_path.endswith("Restore")


@pytest.fixture
def fresh_registry(settings, onnx_cache, monkeypatch):
    settings.KB_EMBED_CACHE = onnx_cache
    monkeypatch.setattr(embeddings, "_registry", {})  # the next get_embedder() reads the settings
    return settings


QUESTIONS = [
    "How do I read a text file one line at a time?",
    "Why does 0.1 + 0.2 not give exactly 0.3?",
    "what does nonlocal do",
    "restore last night's backup",
]


def test_questions_for_torch_documents_go_through_onnx_fp32_and_get_the_same_vectors(fresh_registry):
    fresh_registry.KB_EMBED_BACKEND = "torch"
    documents, questions = get_embedder(), get_embedder(questions=True)

    assert (documents.backend, questions.backend) == ("torch", "onnx")
    torch_vectors = np.asarray(documents.embed(QUESTIONS))
    onnx_vectors = np.asarray(questions.embed(QUESTIONS))
    assert np.min(np.sum(torch_vectors * onnx_vectors, axis=1)) > 0.99999  # unit vectors: cosine


def test_questions_share_an_int8_backend_and_a_mismatch_is_refused(fresh_registry):
    fresh_registry.KB_EMBED_BACKEND = "onnx-int8"
    assert get_embedder(questions=True).backend == "onnx-int8"

    fresh_registry.KB_QUERY_EMBED_BACKEND = "onnx"
    with pytest.raises(ImproperlyConfigured, match="both be int8 or both fp32"):
        get_embedder(questions=True)


def test_an_unknown_question_backend_is_refused_by_its_own_name(fresh_registry):
    fresh_registry.KB_QUERY_EMBED_BACKEND = "tensorrt"
    with pytest.raises(ImproperlyConfigured, match="KB_QUERY_EMBED_BACKEND is 'tensorrt'"):
        get_embedder(questions=True)


def test_questions_can_be_kept_on_torch(fresh_registry):
    fresh_registry.KB_EMBED_BACKEND = "torch"
    fresh_registry.KB_QUERY_EMBED_BACKEND = "torch"
    assert get_embedder(questions=True) is get_embedder()


def test_prepare_models_exports_the_question_model_before_any_question(fresh_registry, onnx_cache):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("kb_prepare_models", stdout=out)

    assert "questions: onnx" in out.getvalue()
    assert list(Path(onnx_cache).glob("*/model.onnx"))
