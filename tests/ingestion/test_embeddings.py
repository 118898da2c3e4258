"""The embedder: the model's own tokenizer and window, offline loading, the TEI client, the cache."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ingestion import embeddings
from ingestion.embeddings import LocalEmbedder, TEIEmbedder, count_tokens, get_embedder, model_location
from ingestion.errors import EmbedderUnavailable


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
