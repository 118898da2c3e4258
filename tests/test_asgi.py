"""The ASGI entry point: the heap is frozen for the garbage collector once the question model is loaded."""

import asyncio
import gc

import pytest
from asgiref.sync import async_to_sync

from kb import asgi, retrieval


def get(path: str) -> int:
    """One GET through kb.asgi.application; its status code."""
    sent, requests = [], [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected; Django stops listening when done

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    async_to_sync(asgi.application)(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.fixture
def unfrozen(monkeypatch):
    monkeypatch.setattr(asgi, "_frozen", False)
    monkeypatch.setattr(retrieval, "question_model_loaded", type(retrieval.question_model_loaded)())
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.django_db
def test_the_heap_is_frozen_after_the_first_question_not_before(unfrozen, settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.SECURE_SSL_REDIRECT = False
    assert get("/login/") == 200
    assert gc.get_freeze_count() == 0  # nothing asked yet: the model is not loaded

    retrieval.embed_query("when do backups run?")
    assert get("/login/") == 200

    assert gc.get_freeze_count() > 100_000
