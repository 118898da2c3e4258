"""Celery entry points: thin, take ids, idempotent.

Nothing imports this module to queue work: ingestion.queue sends tasks by these names.
"""

from __future__ import annotations

import logging

from celery import shared_task

from ingestion import processing, status
from ingestion.errors import TRANSIENT

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
    processing.documents_process(document_ids=document_ids)


# Runs every KB_STALE_SWEEP_SECONDS under celery beat (CELERY_BEAT_SCHEDULE). Two sweeps
# overlapping are harmless: each takes the rows it changes with SKIP LOCKED.
@shared_task(acks_late=True, ignore_result=True)
def recover_stale_documents() -> dict:
    """Re-queue or fail documents whose processing went silent, and resend queued ones the broker lost."""
    return status.documents_recover_stale()


def _process(document_id: int, *, reindex: bool) -> None:
    try:
        processing.document_process(document_id=document_id, reindex=reindex)
    except TRANSIENT:
        raise  # Celery retries with backoff
    except Exception as exc:
        # During a re-index the document's chunks in use stay, and so does the collection's model.
        status.document_fail_unexpectedly(document_id=document_id, exc=exc, reindex=reindex)
        raise
