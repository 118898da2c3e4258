"""Background work is queued by task name, after the caller's transaction commits."""

from __future__ import annotations

import pytest
from celery import current_app
from django.db import transaction

from ingestion import queue, tasks

pytestmark = pytest.mark.django_db


def test_every_name_queued_is_a_registered_task():
    current_app.loader.import_default_modules()
    assert set(queue.TASK_NAMES) <= set(current_app.tasks)
    assert current_app.tasks[queue.INGEST_DOCUMENT] is tasks.ingest_document._get_current_object()


def test_nothing_is_sent_before_the_transaction_commits(django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            queue.ingest(41)
            assert sent == []
    assert sent == [41]


def test_nothing_is_sent_when_the_transaction_rolls_back(django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.reindex_document, "delay", lambda pk: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            queue.reindex(7)
            raise RuntimeError("rolled back")
    assert sent == []


def test_a_group_is_sent_in_tasks_of_kb_ingest_group_documents(settings, django_capture_on_commit_callbacks,
                                                               monkeypatch):  # fmt: skip
    settings.KB_INGEST_GROUP = 2
    groups = []
    monkeypatch.setattr(tasks.ingest_documents, "delay", lambda ids: groups.append(ids))
    with django_capture_on_commit_callbacks(execute=True):
        queue.ingest_group([1, 2, 3, 4, 5])
    assert groups == [[1, 2], [3, 4], [5]]
