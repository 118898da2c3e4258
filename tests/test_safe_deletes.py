"""Safe deletes (issue 15): confirmation first, an undo for a grace period, gone at once from
everything for everyone, purged by celery beat when the grace period ends."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from ingestion import tasks
from ingestion.processing import document_process
from kb import access, retrieval, selectors
from kb.access import system_user
from kb.models import AuditEvent, Chunk, Collection, Document, Source
from kb.services.collections import collection_create, collection_delete, collection_restore, collections_purge_expired
from kb.services.documents import document_delete, documents_purge_expired
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user
from tests.helpers import ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops():
    owner, editor, viewer = make_user("owner"), make_user("editor"), make_user("viewer")
    collection = make_collection("ops", owner=owner, editor=[editor], viewer=[viewer])
    backups = add_document(collection, "runbooks/backups.md", BACKUPS)
    vacation = add_document(collection, "hr/vacation.md", VACATION)
    return {"owner": owner, "editor": editor, "viewer": viewer, "collection": collection,
            "backups": backups, "vacation": vacation}  # fmt: skip


def _documents_found(user, query: str) -> set[str]:
    return {h.chunk.document.source_path for h in retrieval.search(user=user, query=query).hits}


def _actions() -> list[tuple[str, str]]:
    return list(AuditEvent.objects.order_by("pk").values_list("action", "target"))


# Documents -----------------------------------------------------------------------------------


def test_a_deleted_documents_passages_leave_search_citations_and_downloads_at_once(client, ops):
    viewer, backups = ops["viewer"], ops["backups"]
    chunk = backups.chunks.first()
    assert "runbooks/backups.md" in _documents_found(viewer, "When does the database backup run?")

    passages = document_delete(user=ops["editor"], document=backups)

    assert passages == backups.chunk_count > 0
    assert not Chunk.objects.filter(document_id=backups.pk).exists()
    assert "runbooks/backups.md" not in _documents_found(viewer, "When does the database backup run?")
    client.force_login(viewer)
    for url in (reverse("document_detail", args=[backups.pk]), reverse("document_download", args=[backups.pk]),
                reverse("chunk_detail", args=[chunk.pk])):  # fmt: skip
        assert client.get(url).status_code == 404, url
    listed = client.get(reverse("collection_detail", args=[ops["collection"].pk])).content.decode()
    assert "runbooks/backups.md" not in listed and "hr/vacation.md" in listed
    # The row and file wait for an undo.
    row = Document.objects.get(pk=backups.pk)
    assert row.deleted_at is not None and row.deleted_by == ops["editor"] and row.file.storage.exists(row.file.name)


def test_a_chunk_a_racing_worker_stores_for_a_deleted_document_is_never_searched(ops):
    backups = ops["backups"]
    kept = list(Chunk.objects.filter(document=backups).values())
    document_delete(user=ops["editor"], document=backups)
    # A worker that read the document before the delete stores its chunks after it.
    Chunk.objects.bulk_create(
        Chunk(**{k: v for k, v in row.items() if k not in ("id", "embedding_dim", "search_vector", "search_length")})
        for row in kept
    )
    assert not selectors.chunks_readable_by(user=ops["viewer"]).filter(document_id=backups.pk).exists()
    assert "runbooks/backups.md" not in _documents_found(ops["viewer"], "When does the database backup run?")


def test_deleting_a_document_asks_first_then_offers_an_undo_once(client, ops):
    backups = ops["backups"]
    client.force_login(ops["editor"])
    url = reverse("document_delete", args=[backups.pk])

    confirm = client.get(url)
    html = confirm.content.decode()
    assert confirm.status_code == 200 and "1 document" in html and f"{backups.chunk_count} passage" in html
    assert f'action="{url}"' in html and "can undo" in html
    assert Document.objects.alive().filter(pk=backups.pk).exists()  # asking deleted nothing

    response = client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse(
        "collection_detail", args=[backups.collection_id]
    )
    page = client.get(response["Location"]).content.decode()
    assert "Deleted runbooks/backups.md and its" in page
    assert f'action="{reverse("document_restore", args=[backups.pk])}"' in page and ">Undo</button>" in page
    assert 'id="recently-deleted"' in page
    again = client.get(response["Location"]).content.decode()
    assert "Deleted runbooks/backups.md and its" not in again  # the flash is shown once
    assert 'id="recently-deleted"' in again  # the list stays until the purge


def test_the_document_pages_delete_button_is_a_visible_link_to_the_confirmation(client, ops):
    client.force_login(ops["editor"])
    html = client.get(reverse("document_detail", args=[ops["backups"].pk])).content.decode()
    assert f'class="button danger secondary" href="{reverse("document_delete", args=[ops["backups"].pk])}"' in html


def test_viewers_neither_delete_nor_see_recently_deleted(client, ops):
    document_delete(user=ops["editor"], document=ops["backups"])
    client.force_login(ops["viewer"])
    assert client.get(reverse("document_delete", args=[ops["vacation"].pk])).status_code == 404
    assert client.post(reverse("document_delete", args=[ops["vacation"].pk])).status_code == 404
    assert client.post(reverse("document_restore", args=[ops["backups"].pk])).status_code == 404
    page = client.get(reverse("collection_detail", args=[ops["collection"].pk])).content.decode()
    assert 'id="recently-deleted"' not in page
    with pytest.raises(PermissionError):
        document_delete(user=ops["viewer"], document=ops["vacation"])


def test_undo_brings_a_document_back_and_processes_it_again(client, ops):
    backups = ops["backups"]
    document_delete(user=ops["editor"], document=backups)
    client.force_login(ops["editor"])

    response = client.post(reverse("document_restore", args=[backups.pk]))

    assert response.status_code == 302
    backups.refresh_from_db()
    assert backups.deleted_at is None and backups.status == Document.Status.QUEUED
    document_process(document_id=backups.pk)  # the worker's part
    assert "runbooks/backups.md" in _documents_found(ops["viewer"], "When does the database backup run?")
    assert [a for a, _ in _actions() if a.startswith("document.")][-2:] == ["document.delete", "document.restore"]


def test_deleting_an_unfinished_document_cancels_its_processing(ops):
    document = add_document(ops["collection"], "new.md", "# New\n\nA new page.", process=False)
    document_delete(user=ops["editor"], document=document)
    document_process(document_id=document.pk)  # a task still in the queue does nothing
    document.refresh_from_db()
    assert document.status == Document.Status.CANCELLED and not Chunk.objects.filter(document=document).exists()


def test_uploading_a_deleted_document_again_takes_its_place(ops):
    backups = ops["backups"]
    document_delete(user=ops["editor"], document=backups)
    again = add_document(ops["collection"], "runbooks/backups.md", BACKUPS)
    assert again.pk != backups.pk and again.deleted_at is None
    assert not Document.objects.filter(pk=backups.pk).exists()
    assert "runbooks/backups.md" in _documents_found(ops["viewer"], "When does the database backup run?")


def test_the_purge_removes_expired_documents_with_their_files_once(ops, settings, django_capture_on_commit_callbacks):
    settings.KB_DELETE_GRACE_SECONDS = 3600
    backups = ops["backups"]
    stored = backups.file.path
    document_delete(user=ops["editor"], document=backups)
    system = system_user()

    assert documents_purge_expired(actor=system, now=timezone.now() + timedelta(minutes=30)) == 0
    assert Document.objects.filter(pk=backups.pk).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert documents_purge_expired(actor=system, now=timezone.now() + timedelta(minutes=61)) == 1
    assert not Document.objects.filter(pk=backups.pk).exists() and not os.path.exists(stored)
    assert documents_purge_expired(actor=system, now=timezone.now() + timedelta(minutes=61)) == 0  # idempotent
    assert ("document.purge", "runbooks/backups.md") in _actions()
    with pytest.raises(PermissionError):
        documents_purge_expired(actor=ops["owner"])


def test_the_beat_task_purges_what_expired_and_takes_no_arguments(ops, settings):
    settings.KB_DELETE_GRACE_SECONDS = 0
    document_delete(user=ops["editor"], document=ops["backups"])
    other = make_collection("old", owner=ops["owner"])
    collection_delete(actor=ops["owner"], collection=other)

    assert tasks.purge_deleted() == {"documents": 1, "collections": 1}
    assert tasks.purge_deleted() == {"documents": 0, "collections": 0}
    assert "ingestion.tasks.purge_deleted" in {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}


# Collections ---------------------------------------------------------------------------------


def test_deleting_a_collection_asks_for_its_name_and_says_what_goes(client, ops):
    collection = ops["collection"]
    client.force_login(ops["owner"])
    url = reverse("collection_delete", args=[collection.pk])

    html = client.get(url).content.decode()
    assert "2 documents" in html and "passages" in html and 'name="confirm_name"' in html
    wrong = client.post(url, {"confirm_name": "OPS"})
    assert wrong.status_code == 400 and "nothing was deleted" in wrong.content.decode()
    assert Collection.objects.get(pk=collection.pk).deleted_at is None

    response = client.post(url, {"confirm_name": "ops"})

    assert response.status_code == 302 and response["Location"] == reverse("home")
    home = client.get(reverse("home")).content.decode()
    assert "Deleted the collection ops: 2 documents and" in home
    assert f'action="{reverse("collection_restore", args=[collection.pk])}"' in home
    assert "Recently deleted collections" in home


def test_a_deleted_collection_is_gone_for_everyone_at_once(client, ops):
    collection, viewer = ops["collection"], ops["viewer"]
    staff = make_user("staffer", is_staff=True)
    collection_delete(actor=ops["owner"], collection=collection)

    for user in (viewer, ops["editor"], ops["owner"], staff):
        assert collection.pk not in set(access.readable_collection_ids(user)), user
        assert not _documents_found(user, "When does the database backup run?"), user
        client.force_login(user)
        assert client.get(reverse("collection_detail", args=[collection.pk])).status_code == 404
        assert client.get(reverse("document_detail", args=[ops["backups"].pk])).status_code == 404
    client.force_login(viewer)
    assert "Recently deleted" not in client.get(reverse("home")).content.decode()  # viewers cannot restore
    assert client.post(reverse("collection_restore", args=[collection.pk])).status_code == 404


def test_restoring_a_collection_brings_it_back_as_it_was(client, ops):
    collection = ops["collection"]
    source = Source.objects.create(collection=collection, name="wiki", kind="web", location="https://wiki.example/",
                                   every_minutes=60, next_run_at=timezone.now())  # fmt: skip
    collection_delete(actor=ops["owner"], collection=collection)
    source.refresh_from_db()
    assert source.next_run_at is None  # no syncing while deleted

    client.force_login(ops["owner"])
    response = client.post(reverse("collection_restore", args=[collection.pk]))

    assert response.status_code == 302 and response["Location"] == reverse("collection_detail", args=[collection.pk])
    assert "runbooks/backups.md" in _documents_found(ops["viewer"], "When does the database backup run?")
    source.refresh_from_db()
    assert source.next_run_at is not None
    assert [a for a, _ in _actions() if a.startswith("collection.")][-2:] == ["collection.delete", "collection.restore"]


def test_a_deleted_collections_name_stays_taken_until_it_is_purged(ops, settings):
    collection_delete(actor=ops["owner"], collection=ops["collection"])
    with pytest.raises(ValidationError, match="deleted collection is still named"):
        collection_create(user=make_user(is_staff=True), name="Ops")
    settings.KB_DELETE_GRACE_SECONDS = 0
    assert collections_purge_expired(actor=system_user()) == 1
    assert not Chunk.objects.filter(collection_id=ops["collection"].pk).exists()
    assert collection_create(user=make_user(is_staff=True), name="Ops").name == "Ops"
    assert ("collection.purge", "ops") in _actions()


def test_only_owners_and_staff_restore_a_collection(ops):
    collection_delete(actor=ops["owner"], collection=ops["collection"])
    with pytest.raises(PermissionError):
        collection_restore(actor=ops["editor"], collection=ops["collection"])
    assert [c.pk for c in selectors.collections_deleted(user=ops["owner"])] == [ops["collection"].pk]
    assert selectors.collections_deleted(user=ops["editor"]) == []
    assert [c.pk for c in selectors.collections_deleted(user=make_user(is_staff=True))] == [ops["collection"].pk]


def test_a_negative_grace_period_stops_start_up_with_the_variable_named():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "KB_", "DATABASE_URL"))}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "KB_DELETE_GRACE_SECONDS": "-1"})  # fmt: skip
    assert result.returncode != 0 and "KB_DELETE_GRACE_SECONDS=-1: use 0 or more." in result.stderr


def test_earlier_answers_no_longer_cite_a_deleted_document(ops):
    from kb.models import Conversation, Message

    conversation = Conversation.objects.create(user=ops["viewer"], title="backups")
    sources = [
        {
            "n": n,
            "document_id": d.pk,
            "chunk_id": d.chunks.first().pk,
            "collection_id": d.collection_id,
            "title": d.title,
        }  # fmt: skip
        for n, d in enumerate((ops["backups"], ops["vacation"]), start=1)
    ]
    message = Message.objects.create(conversation=conversation, question="When?", answer="At 02:00 [1].",
                                     status=Message.Status.COMPLETE, sources=sources)  # fmt: skip
    document_delete(user=ops["editor"], document=ops["backups"])
    shown = selectors.message_sources(user=ops["viewer"], message=message)
    assert [s["document_id"] for s in shown] == [ops["vacation"].pk]
