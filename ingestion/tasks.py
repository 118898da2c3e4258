"""Celery entry points: thin, take ids, idempotent.

Nothing imports this module to queue work: ingestion.queue sends tasks by these names.
"""

from __future__ import annotations

import logging

from celery import shared_task

from ingestion import processing, queue, status
from ingestion.errors import TRANSIENT
from kb import access
from kb.services import collections, documents, sources

# Redelivered if the worker dies mid-task; transient failures retried with backoff.
DOCUMENT_TASK = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": 5,
}

logger = logging.getLogger(__name__)


@shared_task(**DOCUMENT_TASK)
def ingest_document(self, document_id: int) -> None:
    """Parse, chunk, embed and store one document."""
    _process(document_id, reindex=False)


@shared_task(**DOCUMENT_TASK)
def reindex_document(self, document_id: int) -> None:
    """Embed one document again for its collection's re-index; the last one switches the collection over."""
    _process(document_id, reindex=True)


@shared_task(**DOCUMENT_TASK)
def ingest_documents(self, document_ids: list[int]) -> None:
    """Parse, chunk and store several documents (an archive's pages), embedding their chunks in one pass.

    A document that fails on something unexpected is marked failed and the others go on;
    a transient error retries the task, which skips the documents already stored.
    """
    with status.heartbeat(document_ids):
        processing.documents_process(document_ids=document_ids)


# Runs every KB_STALE_SWEEP_SECONDS under celery beat (CELERY_BEAT_SCHEDULE). Two sweeps
# overlapping are harmless: each takes the rows it changes with SKIP LOCKED.
@shared_task(acks_late=True, ignore_result=True)
def recover_stale_documents() -> dict:
    """Re-queue or fail documents whose processing went silent, and resend queued ones the broker lost."""
    return status.documents_recover_stale()


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def sync_source(self, source_id: int, trigger: str = "schedule") -> None:
    """Read one source into its collection: what changed is stored and queued, what vanished removed.

    Redelivered if the worker dies; the new attempt takes the run over and skips the pages
    already stored. A source that is gone, or already being synced, makes it return quietly.
    """
    run = sources.source_sync(user=access.system_user(), source_id=source_id, trigger=trigger)
    if run is not None:
        logger.info("source %s: run %s %s", source_id, run.pk, run.status)


# Every KB_SOURCE_SCHEDULE_SECONDS under celery beat (CELERY_BEAT_SCHEDULE).
@shared_task(acks_late=True, ignore_result=True)
def sync_due_sources() -> list[int]:
    """Queue a run of every source whose schedule is due, and of those whose run was abandoned."""
    due = sources.sources_due()
    for source_id in due:
        queue.sync_source(source_id, "schedule")
    return due


# Under celery beat (CELERY_BEAT_SCHEDULE), hourly. Takes nothing: what has expired is read
# afresh each run, so a run repeated or overlapping purges nothing twice.
@shared_task(acks_late=True, ignore_result=True)
def purge_deleted() -> dict:
    """Purge the documents and collections deleted longer than KB_DELETE_GRACE_SECONDS ago."""
    system = access.system_user()
    return {
        "documents": documents.documents_purge_expired(actor=system),
        "collections": collections.collections_purge_expired(actor=system),
    }


def _process(document_id: int, *, reindex: bool) -> None:
    try:
        with status.heartbeat([document_id]):
            processing.document_process(document_id=document_id, reindex=reindex)
    except TRANSIENT:
        raise  # Celery retries with backoff
    except Exception as exc:
        # During a re-index the document's chunks in use stay, and so does the collection's model.
        status.document_fail_unexpectedly(document_id=document_id, exc=exc, reindex=reindex)
        raise
