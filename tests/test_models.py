"""The document state machine and the batch summary: kb.models."""

from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from kb.access import system_user
from kb.models import DOCUMENT_TRANSITIONS, BatchSummary, Document
from tests.factories import add_document, make_collection

pytestmark = pytest.mark.django_db

S = Document.Status


@pytest.fixture
def document():
    return add_document(make_collection(), "notes.md", "# Notes\n\nSome text.", process=False)


def _put(document: Document, status: str) -> None:
    # Only a test puts a row straight into a status: the product goes through transition().
    Document.objects.filter(pk=document.pk).update(status=status)


@pytest.mark.parametrize(("start", "end"), list(itertools.product(S, S)))
def test_a_document_moves_only_along_the_transition_table(document, start, end):
    _put(document, start)
    moved = Document.objects.filter(pk=document.pk).transition(end)
    document.refresh_from_db()
    allowed = start in DOCUMENT_TRANSITIONS[end]
    assert (moved, document.status) == ((1, end) if allowed else (0, start))


def test_a_late_progress_mark_does_not_undo_a_cancel(document):
    Document.objects.filter(pk=document.pk).transition(S.PROCESSING, stage="embedding")
    Document.objects.filter(pk=document.pk).transition(S.CANCELLED, error="Cancelled by an editor.")
    assert Document.objects.filter(pk=document.pk).transition(S.PROCESSING, stage="embedding", progress_done=3) == 0
    document.refresh_from_db()
    assert (document.status, document.progress_done) == (S.CANCELLED, 0)


def test_a_finished_document_cannot_be_cancelled(document):
    for status in (S.READY, S.FAILED):
        _put(document, status)
        assert Document.objects.filter(pk=document.pk).transition(S.CANCELLED) == 0


def test_every_transition_refreshes_the_heartbeat(document):
    long_ago = timezone.now() - timezone.timedelta(hours=2)
    Document.objects.filter(pk=document.pk).update(updated_at=long_ago)
    Document.objects.filter(pk=document.pk).transition(S.PROCESSING, stage="parsing")
    document.refresh_from_db()
    assert document.updated_at > long_ago + timezone.timedelta(hours=1)


def test_an_unknown_status_is_refused(document):
    with pytest.raises(ValueError):
        Document.objects.filter(pk=document.pk).transition("done")


def test_a_new_version_of_any_document_is_queued_again(document):
    from io import BytesIO

    from kb.services.documents import document_upload

    for status in S:
        _put(document, status)
        outcome = document_upload(
            user=system_user(), collection=document.collection, file=BytesIO(f"# Notes {status}".encode()),
            source_path="notes.md", enqueue=False,
        )  # fmt: skip
        assert (outcome.outcome, outcome.document.status) == ("updated", S.QUEUED)


def test_batch_summary_round_trips_through_json_and_ignores_unknown_keys():
    summary = BatchSummary.from_json({"created": 2, "errors": [{"source": "a", "reason": "b"}], "later": 1})
    assert summary.created == 2 and summary.files == 0
    assert BatchSummary.from_json(summary.as_json()) == summary


def test_batch_summary_folds_in_an_archive_without_counting_its_files_again():
    batch = BatchSummary(files=1, created=1)
    archive = BatchSummary(created=3, unchanged=2, ignored=1, removed=1, removed_paths=["old.md"])
    archive.refuse("bad.md", "The file is empty.")
    batch.add(archive)
    assert (batch.files, batch.created, batch.unchanged, batch.refused, batch.removed) == (1, 4, 2, 1, 1)
    assert batch.errors == [{"source": "bad.md", "reason": "The file is empty."}]
    assert batch.removed_paths == ["old.md"]
