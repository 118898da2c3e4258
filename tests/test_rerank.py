"""The optional reranking stage, against a stand-in that speaks TEI's and the Cohere/vLLM shapes.

No reranker model installs offline here, so tests/reranker_standin.py plays the server; kb's
real client (kb/rerank.py, over HTTP) talks to it unchanged.
"""

from __future__ import annotations

import logging

import pytest

from kb import rerank, retrieval
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user
from tests.reranker_standin import RerankerBehaviour, reranker_standin

pytestmark = pytest.mark.django_db

QUESTION = "how does the nightly backup work"


@pytest.fixture
def library():
    reader = make_user()
    ops = make_collection(viewer=[reader])
    add_document(ops, "backups.md", BACKUPS)
    add_document(ops, "vacation.md", VACATION)
    hidden = make_collection()  # the reader has no grant here
    add_document(hidden, "secret.md", "# Backup keys\n\nThe backup encryption key is kept in the red safe.")
    return reader


def prefers(word: str):
    """A relevance the stand-in applies: passages holding `word` first, then the rest."""
    return lambda query, text: 1.0 if word in text.lower() else 0.01


def search(reader, **kwargs):
    return retrieval.search(user=reader, query=QUESTION, top_k=3, **kwargs)


@pytest.mark.parametrize(("path", "api"), [("/rerank", "tei"), ("/v1/rerank", "cohere"), ("/v1/rerank/", "cohere")])
def test_the_api_shape_follows_the_path(path, api):
    assert rerank.api_of(f"http://reranker:8080{path}") == api
    assert rerank.api_of(f"http://reranker:8080{path}", "tei") == "tei"


def test_off_by_default(library, settings):
    assert settings.KB_RERANK_URL == ""
    result = search(library)
    assert not result.reranked and all(h.rerank_score is None for h in result.hits)


def test_a_tei_reranker_reorders_the_fused_passages(library, settings):
    plain = search(library)
    assert plain.hits[0].chunk.heading_path.endswith("Schedule")
    behaviour = RerankerBehaviour(relevance=prefers("carry over"))
    with reranker_standin(behaviour) as base:
        settings.KB_RERANK_URL = f"{base}/rerank"
        result = search(library)
    assert result.reranked
    assert result.hits[0].chunk.heading_path.endswith("Carry-over")
    assert result.hits[0].rerank_score == 1.0 and result.hits[1].rerank_score == 0.01
    ((request,),) = [behaviour.requests]
    assert request["path"] == "/rerank" and request["body"]["query"] == QUESTION
    texts = request["body"]["texts"]
    # Every readable passage in the pool went, with its heading; nothing of the hidden collection.
    assert 3 <= len(texts) <= settings.KB_RERANK_CANDIDATES
    assert any(t.startswith("Backups > Schedule\n\n") for t in texts)
    assert not any("red safe" in t for t in texts)
    assert result.timings.rerank_ms > 0


def test_a_cohere_style_reranker_gets_the_served_model_name_and_token(library, settings):
    behaviour = RerankerBehaviour(relevance=prefers("restore"), served_model="BAAI/bge-reranker-v2-m3")
    with reranker_standin(behaviour) as base:
        settings.KB_RERANK_URL = f"{base}/v1/rerank"
        settings.KB_RERANK_MODEL = "BAAI/bge-reranker-v2-m3"
        settings.KB_RERANK_TOKEN = "secret-token"
        result = search(library)
    assert result.reranked and result.hits[0].chunk.heading_path.endswith("Restore")
    (request,) = behaviour.requests
    body = request["body"]
    assert body["model"] == "BAAI/bge-reranker-v2-m3" and body["top_n"] == len(body["documents"])
    assert request["auth"] == "Bearer secret-token"


@pytest.mark.parametrize(
    "fault",
    ["status", "slow", "wrong shape", "unknown model", "unreachable", "invalid url"],
)
def test_a_failing_reranker_leaves_the_fused_order_and_says_why(library, settings, caplog, fault):
    plain = [h.chunk.pk for h in search(library).hits]
    behaviour = RerankerBehaviour(relevance=prefers("carry over"))
    if fault == "status":
        behaviour.status = 500
    elif fault == "slow":
        behaviour.delay = 1.0
        settings.KB_RERANK_TIMEOUT = 0.2
    elif fault == "wrong shape":
        behaviour.wrong_shape = True
    with reranker_standin(behaviour) as base, caplog.at_level(logging.WARNING, logger="kb.rerank"):
        settings.KB_RERANK_URL = f"{base}/v1/rerank" if fault == "unknown model" else f"{base}/rerank"
        settings.KB_RERANK_MODEL = "not-served"
        if fault == "unreachable":
            settings.KB_RERANK_URL = "http://127.0.0.1:9/rerank"
        if fault == "invalid url":
            settings.KB_RERANK_URL = "http://[::1/rerank"
        result = search(library)
    assert not result.reranked
    assert [h.chunk.pk for h in result.hits] == plain
    (record,) = [r for r in caplog.records if r.name == "kb.rerank"]
    expected = {"status": "HTTP 500", "slow": "did not answer within 0.2 s", "wrong shape": "tei shape",
                "unknown model": "HTTP 404", "unreachable": "cannot be reached",
                "invalid url": "not a valid URL"}[fault]  # fmt: skip
    assert expected in record.getMessage()
    assert "fourteen copies" not in record.getMessage()  # no passage text in the log


def test_only_hybrid_search_is_reranked(library, settings):
    behaviour = RerankerBehaviour(relevance=prefers("carry over"))
    with reranker_standin(behaviour) as base:
        settings.KB_RERANK_URL = f"{base}/rerank"
        for mode in ("dense", "keyword"):
            assert not search(library, mode=mode).reranked
    assert behaviour.requests == []
