import io

import pytest
from django.core.exceptions import ValidationError

from kb import services
from kb.access import system_user
from kb.models import Chunk, Document
from tests.factories import add_document, make_collection, make_user
from tests.test_views import BACKUPS

pytestmark = pytest.mark.django_db


def _upload(collection, name, content, **kwargs):
    return services.document_upload(
        user=kwargs.pop("user", system_user()), collection=collection, file=io.BytesIO(content.encode()),
        source_path=name, enqueue=False, **kwargs,
    )  # fmt: skip


def test_creator_owns_the_new_collection():
    admin = make_user(is_staff=True)
    collection = services.collection_create(user=admin, name="Runbooks")
    assert collection.grants.get().role == "owner"


def test_collection_names_are_unique_ignoring_case():
    make_collection("Runbooks")
    with pytest.raises(ValidationError):
        services.collection_create(user=make_user(is_staff=True), name="runbooks")


def test_processing_stores_chunks_with_headings_and_vectors():
    document = add_document(make_collection(), "backups.md", BACKUPS)
    assert document.status == Document.Status.READY
    chunks = list(document.chunks.order_by("ordinal"))
    assert document.chunk_count == len(chunks) >= 2
    assert any(c.heading_path.endswith("Schedule") for c in chunks)
    assert all(len(c.embedding) == 384 for c in chunks)


def test_same_content_again_is_unchanged_and_creates_no_duplicate():
    collection = make_collection()
    first = add_document(collection, "backups.md", BACKUPS)
    again = _upload(collection, "backups.md", BACKUPS)
    renamed = _upload(collection, "copy-of-backups.md", BACKUPS)
    assert again.outcome == "unchanged" and again.document.pk == first.pk
    assert renamed.outcome == "unchanged" and renamed.document.pk == first.pk
    assert Document.objects.filter(collection=collection).count() == 1


def test_changed_content_replaces_the_chunks_atomically():
    collection = make_collection()
    document = add_document(collection, "backups.md", BACKUPS)
    old_ids = set(document.chunks.values_list("pk", flat=True))
    outcome = _upload(collection, "backups.md", BACKUPS.replace("nightly at 02:00", "hourly"))
    assert outcome.outcome == "updated"
    # Until the new version is processed, readers still see the old chunks, not nothing.
    assert set(Chunk.objects.filter(document=document).values_list("pk", flat=True)) == old_ids
    services.document_process(document_id=document.pk)
    texts = " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))
    assert "hourly" in texts and "02:00" not in texts
    assert not Chunk.objects.filter(pk__in=old_ids).exists()


def test_stale_work_is_discarded_when_the_file_changed_meanwhile():
    collection = make_collection()
    document = add_document(collection, "backups.md", BACKUPS)
    before = list(document.chunks.values_list("pk", flat=True))
    stored = services.document_replace_chunks(
        document_id=document.pk, content_hash="0" * 64, title="x", chunks=[], vectors=[]
    )
    assert stored is False
    assert list(document.chunks.values_list("pk", flat=True)) == before


def test_processing_twice_is_harmless():
    document = add_document(make_collection(), "backups.md", BACKUPS)
    ids = set(document.chunks.values_list("pk", flat=True))
    services.document_process(document_id=document.pk)
    assert set(document.chunks.values_list("pk", flat=True)) == ids


def test_processing_a_deleted_document_is_a_quiet_no_op():
    services.document_process(document_id=987654321)


def test_a_file_that_cannot_be_parsed_fails_with_a_reason_and_stores_no_chunk():
    document = add_document(make_collection(), "image.md", "\x00\x01\x02 binary \x00" * 50)
    assert document.status == Document.Status.FAILED
    assert document.error
    assert not document.chunks.exists()


def test_empty_and_oversize_files_are_refused(settings):
    collection = make_collection()
    with pytest.raises(ValidationError, match="empty"):
        _upload(collection, "empty.md", "")
    settings.KB_MAX_UPLOAD_MB = 1
    with pytest.raises(ValidationError, match="limit is 1 MB"):
        _upload(collection, "big.txt", "x" * (1024 * 1024 + 1))
    assert not Document.objects.filter(collection=collection).exists()


def test_paths_that_climb_out_are_refused():
    with pytest.raises(ValidationError):
        _upload(make_collection(), "../../etc/passwd", "root")


def test_viewers_cannot_upload():
    viewer = make_user()
    collection = make_collection(viewer=[viewer])
    with pytest.raises(PermissionError):
        _upload(collection, "a.md", "# A", user=viewer)


def test_upload_enqueues_the_ingest_task_only_after_commit(django_capture_on_commit_callbacks, monkeypatch):
    queued = []
    from ingestion import tasks

    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: queued.append(pk))
    collection = make_collection()
    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.document_upload(
            user=system_user(), collection=collection, file=io.BytesIO(b"# Hello"), source_path="hello.md"
        )
        assert queued == []
    assert queued == [outcome.document.pk]


def test_deleting_a_document_removes_its_chunks_and_file(django_capture_on_commit_callbacks):
    document = add_document(make_collection(), "backups.md", BACKUPS)
    path = document.file.path
    with django_capture_on_commit_callbacks(execute=True):
        services.document_delete(user=system_user(), document=document)
    assert not Chunk.objects.filter(document_id=document.pk).exists()
    import os

    assert not os.path.exists(path)


def test_a_failed_upload_leaves_no_stored_file(settings, monkeypatch):
    collection = make_collection()
    before = {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()}

    def broken_create(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Document.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        _upload(collection, "notes.md", "# Notes\n\nSome text.")
    assert {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()} == before


def test_documents_processed_together_match_those_processed_alone():
    import numpy as np

    collection = make_collection()
    alone = add_document(collection, "backups.md", BACKUPS)
    other = make_collection()
    together = [
        _upload(other, "backups.md", BACKUPS).document,
        _upload(other, "bad.md", "\x00\x01 binary \x00" * 50).document,
        _upload(other, "short.md", "# Short\n\nOne line.").document,
    ]
    services.documents_process(document_ids=[d.pk for d in together])

    statuses = {d.source_path: d.status for d in Document.objects.filter(collection=other)}
    assert statuses == {"backups.md": "ready", "bad.md": "failed", "short.md": "ready"}
    expected = list(alone.chunks.order_by("ordinal"))
    got = list(Chunk.objects.filter(document=together[0]).order_by("ordinal"))
    assert [c.text for c in got] == [c.text for c in expected]
    # Cosines, not equality: bf16 (the default on a CPU with AMX) rounds a little differently
    # with another batch's padding. A vector stored against the wrong chunk would be far below.
    cosines = np.sum(np.asarray([c.embedding for c in got]) * [c.embedding for c in expected], axis=1)
    assert cosines.min() > 0.9999


def test_answer_start_reads_and_claims_a_pending_message_and_reads_nothing_for_one_being_written(
    django_assert_num_queries,
):
    from kb.models import Message

    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = services.message_ask(user=user, question="When does the backup run?", collections=[collection])

    sources, history, claimed = services.message_answer_start(user=user, message=message)
    assert claimed and message.status == Message.Status.STREAMING
    assert sources and {s["document_id"] for s in sources} == {collection.documents.get().pk} and history == []

    # A second reader (another tab, another web process) only follows the relay: its
    # sources and history are the writer's business.
    with django_assert_num_queries(0):
        assert services.message_answer_start(user=user, message=message) == ([], [], False)
