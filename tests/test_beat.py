"""Periodic repairs run under celery beat, never as a side effect of a page poll."""

from __future__ import annotations

import pytest
from celery import current_app
from django.urls import reverse
from django.utils import timezone

from ingestion import tasks
from kb import selectors
from kb.models import Document
from kb.services.documents import batch_create
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def stale(settings):
    """A document 'processing' whose worker went silent an hour ago."""
    settings.KB_STALE_SECONDS = 60
    owner = make_user()
    collection = make_collection(owner=owner)
    batch = batch_create(user=owner, collection=collection, label="one file")
    document = add_document(collection, "notes.md", "# Notes\n\nText.", process=False)
    an_hour_ago = timezone.now() - timezone.timedelta(hours=1)
    Document.objects.filter(pk=document.pk).update(status=Document.Status.PROCESSING, batch=batch,
                                                   updated_at=an_hour_ago)  # fmt: skip
    return owner, collection, document, an_hour_ago


def test_the_beat_schedule_runs_the_stale_sweep_as_a_registered_task(settings):
    current_app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "ingestion.tasks.recover_stale_documents" in scheduled
    assert scheduled <= set(current_app.tasks)


def test_the_sweep_task_requeues_a_silent_document(stale, monkeypatch, django_capture_on_commit_callbacks):
    _, _, document, _ = stale
    sent = []
    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        result = tasks.recover_stale_documents()
    document.refresh_from_db()
    assert result == {"requeued": 1, "failed": 0}
    assert document.status == Document.Status.QUEUED and sent == [document.pk]


def test_watching_an_upload_s_progress_changes_nothing(client, stale):
    owner, collection, document, an_hour_ago = stale
    client.force_login(owner)
    url = reverse("collection_detail", args=[collection.pk]) + "?part=batches"
    assert client.get(url, headers={"HX-Request": "true"}).status_code == 200
    document.refresh_from_db()
    assert (document.status, document.updated_at) == (Document.Status.PROCESSING, an_hour_ago)


def test_batch_progress_for_the_page_takes_the_same_three_queries_for_one_batch_or_three(
    django_assert_num_queries,
):
    owner = make_user(is_staff=True)
    collection = make_collection(owner=owner)
    # Staff read every collection without a grant lookup: the queries are the batches, their
    # grouped counts and their unfinished documents, however many batches there are.
    for n in range(3):
        batch = batch_create(user=owner, collection=collection, label=f"batch {n}")
        for i in range(n + 1):
            document = add_document(collection, f"b{n}/page{i}.md", f"# Page {n} {i}\n\nText.", process=False)
            Document.objects.filter(pk=document.pk).update(batch=batch)
        if n == 0:
            with django_assert_num_queries(3):
                [only] = selectors.batch_overview(user=owner, collection=collection)
            assert (only.progress.total, len(only.unfinished)) == (1, 1)
    with django_assert_num_queries(3):
        batches = selectors.batch_overview(user=owner, collection=collection)
    assert [b.progress.total for b in batches] == [3, 2, 1]
    assert [len(b.unfinished) for b in batches] == [3, 2, 1]
    assert all(b.progress.queued == b.progress.total for b in batches)
