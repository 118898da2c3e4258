"""The sources pages: add a source in the browser's form, watch its runs, sync now, remove it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from kb.access import system_user
from kb.models import Document, Source, SourceRun
from kb.services.sources import source_add, source_sync
from tests.factories import make_collection, make_user

pytestmark = pytest.mark.django_db

TOKEN = "glpat-never-shown-again-4711"


@pytest.fixture
def setup(tmp_path, settings):
    root = tmp_path / "shares" / "runbooks"
    root.mkdir(parents=True)
    (root / "restore.md").write_text("# Restore\n\nRestore from the newest snapshot with restic restore.\n")
    settings.KB_SOURCE_ROOTS = [str(tmp_path / "shares")]
    editor, viewer = make_user(), make_user()
    collection = make_collection("ops", editor=[editor], viewer=[viewer])
    return editor, viewer, collection, root


def test_an_editor_adds_a_source_whose_credentials_are_never_shown_again(
    client, setup, django_capture_on_commit_callbacks
):
    editor, _, collection, root = setup
    client.force_login(editor)
    form = client.get(reverse("source_create", args=[collection.pk]))
    assert form.status_code == 200 and b'name="token"' in form.content
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("source_create", args=[collection.pk]), {
            "kind": "folder", "location": str(root), "exclude": "drafts/*\n*.tmp", "every_minutes": "30",
            "username": "svc-kb", "token": TOKEN,
        })  # fmt: skip
    source = Source.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("source_detail", args=[source.pk])
    assert len(callbacks) == 1  # the first sync is queued once the source is saved
    assert source.exclude == ["drafts/*", "*.tmp"] and source.every_minutes == 30
    page = client.get(response["Location"]).content.decode()
    assert "stored, encrypted" in page and TOKEN not in page and "every 30 min" in page
    assert TOKEN not in client.get(reverse("collection_detail", args=[collection.pk])).content.decode()


def test_a_refused_location_redisplays_the_form_with_the_reason_and_without_the_token(client, setup, tmp_path):
    editor, _, collection, _ = setup
    client.force_login(editor)
    response = client.post(reverse("source_create", args=[collection.pk]), {
        "kind": "folder", "location": str(tmp_path), "token": TOKEN,
    })  # fmt: skip
    page = response.content.decode()
    assert response.status_code == 400 and "outside the folders kb may read" in page and TOKEN not in page
    assert not Source.objects.exists()


def test_the_source_page_shows_its_runs_counts_and_documents_with_their_dates(client, setup):
    editor, viewer, collection, root = setup
    source = source_add(user=system_user(), collection=collection, kind="folder", location=str(root), sync=False)
    source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    (root / "restore.md").unlink()
    source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    client.force_login(viewer)
    page = client.get(reverse("source_detail", args=[source.pk])).content.decode()
    assert page.count('class="run run-done"') == 2
    assert "runbooks/restore.md" in page and "removed (gone from the source)" in page
    assert "Sync now" not in page and "Remove source" not in page  # a viewer only reads
    collection_page = client.get(reverse("collection_detail", args=[collection.pk])).content.decode()
    assert "runbooks" in collection_page and "Add a source" not in collection_page


def test_sync_now_queues_a_run_and_the_runs_partial_polls_until_it_ends(
    client, setup, django_capture_on_commit_callbacks
):
    editor, _, collection, root = setup
    source = source_add(user=system_user(), collection=collection, kind="folder", location=str(root), sync=False)
    client.force_login(editor)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("source_sync", args=[source.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200 and len(callbacks) == 1
    assert 'id="runs"' in response.content.decode() and "every 2s" in response.content.decode()
    SourceRun.objects.create(source=source)  # a run in progress: Sync now does not start a second
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("source_sync", args=[source.pk]), headers={"HX-Request": "true"})
    assert callbacks == [] and "being synced already" in response.content.decode()
    SourceRun.objects.update(status=SourceRun.Status.DONE)
    part = client.get(reverse("source_detail", args=[source.pk]) + "?part=runs", headers={"HX-Request": "true"})
    assert "every 2s" not in part.content.decode()  # nothing runs: the partial stops polling


def test_removing_a_source_from_its_page_removes_its_documents(client, setup):
    editor, _, collection, root = setup
    source = source_add(user=system_user(), collection=collection, kind="folder", location=str(root), sync=False)
    source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    client.force_login(editor)
    response = client.post(reverse("source_remove", args=[source.pk]))
    assert response.status_code == 302 and not Source.objects.exists() and not Document.objects.exists()
