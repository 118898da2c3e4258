"""With the embedding model on a server (KB_EMBED_URL), a task parses its next document while the
server embeds this one's chunks; with a local model it keeps one embedding pass (test_batches)."""

from __future__ import annotations

import time

import pytest

from ingestion import embeddings, pipeline
from ingestion.processing import documents_process
from kb.models import Chunk, Document
from tests.factories import add_document, make_collection
from tests.tei_standin import TEIStandin

pytestmark = pytest.mark.django_db

PAGE = "# Page {i}\n\n## Backups\n\nThe backup of system {i} runs nightly and is kept for {i} days.\n"


@pytest.fixture
def tei(settings, monkeypatch):
    monkeypatch.setattr(embeddings, "_registry", {})  # an embedder for the stand-in's URL; restored after
    with TEIStandin(latency=0.4) as standin:
        settings.KB_EMBED_URL = standin.url
        yield standin


@pytest.fixture
def parses(monkeypatch) -> list[tuple[float, float, str]]:
    """(start, end, name) of each parse, each made to take 0.15 s like a long page."""
    seen: list[tuple[float, float, str]] = []
    real = pipeline.parse_and_chunk

    def timed(path, *, source_path, **kwargs):
        started = time.monotonic()
        time.sleep(0.15)
        try:
            return real(path, source_path=source_path, **kwargs)
        finally:
            seen.append((started, time.monotonic(), source_path))

    monkeypatch.setattr(pipeline, "parse_and_chunk", timed)
    return seen


def _documents(collection, n: int, *, broken: int | None = None) -> list[int]:
    ids = []
    for i in range(n):
        text = "%PDF-1.7 broken" if i == broken else PAGE.format(i=i)
        name = f"page{i}.pdf" if i == broken else f"page{i}.md"
        ids.append(add_document(collection, name, text, process=False).pk)
    return ids


def test_the_next_document_is_parsed_while_the_server_embeds_this_one(tei, parses):
    collection = make_collection()
    assert collection.embed_spec.url == tei.url
    ids = _documents(collection, 4)
    documents_process(document_ids=ids)
    assert set(Document.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"ready"}
    assert [texts for *_, texts in tei.requests] == [1, 1, 1, 1]  # one request per document
    # Every parse after the first ran while an embedding request was in flight.
    overlapped = [
        name
        for start, end, name in parses[1:]
        if any(came < end and start < answered for came, answered, _ in tei.requests)
    ]
    assert overlapped == ["page1.md", "page2.md", "page3.md"], (parses, tei.requests)
    chunk = Chunk.objects.filter(document_id=ids[2]).first()
    assert list(chunk.embedding) == pytest.approx(tei.vector(_embedded_text(chunk)), abs=1e-6)


def _embedded_text(chunk) -> str:
    return pipeline.embedding_text(title=chunk.document.title, heading_path=chunk.heading_path, text=chunk.text,
                                   embedder=embeddings.get_embedder(chunk.collection.embed_spec))  # fmt: skip


def test_a_document_that_cannot_be_parsed_fails_alone_with_its_reason(tei, parses):
    collection = make_collection()
    ids = _documents(collection, 4, broken=1)
    documents_process(document_ids=ids)
    statuses = dict(Document.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert [statuses[pk] for pk in ids] == ["ready", "failed", "ready", "ready"]
    assert Document.objects.get(pk=ids[1]).error
    assert not Chunk.objects.filter(document_id=ids[1]).exists()
    assert len(tei.requests) == 3


def test_a_server_that_fails_leaves_the_documents_for_the_retry(tei, parses):
    collection = make_collection()
    ids = _documents(collection, 2)
    tei.stop()  # nothing answers at the URL any more
    with pytest.raises(embeddings.EmbedderUnavailable):
        documents_process(document_ids=ids)
    assert not Chunk.objects.filter(document_id__in=ids).exists()
    assert set(Document.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"processing"}


def test_a_local_model_still_embeds_a_task_in_one_pass(monkeypatch):
    collection = make_collection()
    assert not collection.embed_spec.url
    ids = _documents(collection, 3)
    passes, real = [], pipeline.embed_texts
    monkeypatch.setattr(pipeline, "embed_texts", lambda texts, **kw: passes.append(len(texts)) or real(texts, **kw))
    documents_process(document_ids=ids)
    assert set(Document.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"ready"}
    assert passes == [Chunk.objects.filter(document_id__in=ids).count()]  # one pass over all three
