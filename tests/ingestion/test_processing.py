"""ingestion.processing: a batch's documents processed together, and how a step's failure ends."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from ingestion import pipeline, processing
from ingestion.processing import document_process, documents_process
from ingestion.store import document_replace_chunks
from kb.models import Chunk, Document
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, upload_document

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending():
    collection = make_collection()
    return [
        add_document(collection, "ops/backups.md", BACKUPS, process=False),
        add_document(collection, "hr/vacation.md", VACATION, process=False),
    ]


def test_the_soft_time_limit_stops_the_task_instead_of_failing_its_documents(pending, monkeypatch):
    def out_of_time(*args, **kwargs):
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(pipeline, "embed_texts", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        processing.documents_process(document_ids=[d.pk for d in pending])
    for document in pending:
        document.refresh_from_db()
        assert document.status != Document.Status.FAILED and document.error == ""


def test_an_unexpected_error_fails_the_documents_of_that_step_with_a_reason(pending, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError

    monkeypatch.setattr(pipeline, "embed_texts", broken)
    processing.documents_process(document_ids=[d.pk for d in pending])
    for document in pending:
        document.refresh_from_db()
        assert document.status == Document.Status.FAILED
        assert "unexpected error (ZeroDivisionError)" in document.error


def test_documents_processed_together_are_each_ready_with_their_own_chunks(pending):
    processing.documents_process(document_ids=[d.pk for d in pending])
    for document in pending:
        document.refresh_from_db()
        assert document.status == Document.Status.READY
        assert document.chunk_count == document.chunks.count() > 0


def test_processing_stores_chunks_with_headings_and_vectors():
    document = add_document(make_collection(), "backups.md", BACKUPS)
    assert document.status == Document.Status.READY
    chunks = list(document.chunks.order_by("ordinal"))
    assert document.chunk_count == len(chunks) >= 2
    assert any(c.heading_path.endswith("Schedule") for c in chunks)
    assert all(len(c.embedding) == 384 for c in chunks)


def test_changed_content_replaces_the_chunks_atomically():
    collection = make_collection()
    document = add_document(collection, "backups.md", BACKUPS)
    old_ids = set(document.chunks.values_list("pk", flat=True))
    outcome = upload_document(collection, "backups.md", BACKUPS.replace("nightly at 02:00", "hourly"))
    assert outcome.outcome == "updated"
    # Until the new version is processed, readers still see the old chunks, not nothing.
    assert set(Chunk.objects.filter(document=document).values_list("pk", flat=True)) == old_ids
    document_process(document_id=document.pk)
    texts = " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))
    assert "hourly" in texts and "02:00" not in texts
    assert not Chunk.objects.filter(pk__in=old_ids).exists()


def test_stale_work_is_discarded_when_the_file_changed_meanwhile():
    collection = make_collection()
    document = add_document(collection, "backups.md", BACKUPS)
    before = list(document.chunks.values_list("pk", flat=True))
    stored = document_replace_chunks(
        document_id=document.pk, content_hash="0" * 64, title="x", chunks=[], vectors=[]
    )
    assert stored is False
    assert list(document.chunks.values_list("pk", flat=True)) == before


def test_processing_twice_is_harmless():
    document = add_document(make_collection(), "backups.md", BACKUPS)
    ids = set(document.chunks.values_list("pk", flat=True))
    document_process(document_id=document.pk)
    assert set(document.chunks.values_list("pk", flat=True)) == ids


def test_processing_a_deleted_document_is_a_quiet_no_op():
    document_process(document_id=987654321)


def test_a_file_that_cannot_be_parsed_fails_with_a_reason_and_stores_no_chunk():
    document = add_document(make_collection(), "image.md", "\x00\x01\x02 binary \x00" * 50)
    assert document.status == Document.Status.FAILED
    assert document.error
    assert not document.chunks.exists()


def test_documents_processed_together_match_those_processed_alone():
    import numpy as np

    collection = make_collection()
    alone = add_document(collection, "backups.md", BACKUPS)
    other = make_collection()
    together = [
        upload_document(other, "backups.md", BACKUPS).document,
        upload_document(other, "bad.md", "\x00\x01 binary \x00" * 50).document,
        upload_document(other, "short.md", "# Short\n\nOne line.").document,
    ]
    documents_process(document_ids=[d.pk for d in together])

    statuses = {d.source_path: d.status for d in Document.objects.filter(collection=other)}
    assert statuses == {"backups.md": "ready", "bad.md": "failed", "short.md": "ready"}
    expected = list(alone.chunks.order_by("ordinal"))
    got = list(Chunk.objects.filter(document=together[0]).order_by("ordinal"))
    assert [c.text for c in got] == [c.text for c in expected]
    # Cosines, not equality: bf16 (the default on a CPU with AMX) rounds a little differently
    # with another batch's padding. A vector stored against the wrong chunk would be far below.
    cosines = np.sum(np.asarray([c.embedding for c in got]) * [c.embedding for c in expected], axis=1)
    assert cosines.min() > 0.9999
