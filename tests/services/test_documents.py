"""kb.services.documents: uploads, their refusals, queuing and deletion."""

import io

import pytest
from django.core.exceptions import ValidationError

from kb.access import system_user
from kb.models import Chunk, Document
from kb.services.documents import document_delete, document_purge, document_upload
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user, upload_document

pytestmark = pytest.mark.django_db


def test_same_content_again_is_unchanged_and_creates_no_duplicate():
    collection = make_collection()
    first = add_document(collection, "backups.md", BACKUPS)
    again = upload_document(collection, "backups.md", BACKUPS)
    renamed = upload_document(collection, "copy-of-backups.md", BACKUPS)
    assert again.outcome == "unchanged" and again.document.pk == first.pk
    assert renamed.outcome == "unchanged" and renamed.document.pk == first.pk
    assert Document.objects.filter(collection=collection).count() == 1


def test_empty_and_oversize_files_are_refused(settings):
    collection = make_collection()
    with pytest.raises(ValidationError, match="empty"):
        upload_document(collection, "empty.md", "")
    settings.KB_MAX_UPLOAD_MB = 1
    with pytest.raises(ValidationError, match="limit is 1 MB"):
        upload_document(collection, "big.txt", "x" * (1024 * 1024 + 1))
    assert not Document.objects.filter(collection=collection).exists()


def test_paths_that_climb_out_are_refused():
    with pytest.raises(ValidationError):
        upload_document(make_collection(), "../../etc/passwd", "root")


def test_viewers_cannotupload_document():
    viewer = make_user()
    collection = make_collection(viewer=[viewer])
    with pytest.raises(PermissionError):
        upload_document(collection, "a.md", "# A", user=viewer)


def test_upload_enqueues_the_ingest_task_only_after_commit(django_capture_on_commit_callbacks, monkeypatch):
    queued = []
    from ingestion import tasks

    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: queued.append(pk))
    collection = make_collection()
    with django_capture_on_commit_callbacks(execute=True):
        outcome = document_upload(
            user=system_user(), collection=collection, file=io.BytesIO(b"# Hello"), source_path="hello.md"
        )
        assert queued == []
    assert queued == [outcome.document.pk]


def test_deleting_a_document_removes_its_chunks_at_once_and_its_file_when_purged(django_capture_on_commit_callbacks):
    import os

    document = add_document(make_collection(), "backups.md", BACKUPS)
    path = document.file.path
    with django_capture_on_commit_callbacks(execute=True):
        document_delete(user=system_user(), document=document)
    assert not Chunk.objects.filter(document_id=document.pk).exists()
    assert os.path.exists(path), "kept for the undo grace period"
    document.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        document_purge(user=system_user(), document=document)
    assert not os.path.exists(path)


def test_a_failed_upload_leaves_no_stored_file(settings, monkeypatch):
    collection = make_collection()
    before = {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()}

    def broken_create(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Document.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        upload_document(collection, "notes.md", "# Notes\n\nSome text.")
    assert {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()} == before
