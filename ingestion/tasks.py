"""Celery entry points: thin, take ids, idempotent."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from ingestion.errors import EmbedderUnavailable

# Worth retrying: the database or the embedding server being briefly away.
TRANSIENT = (OperationalError, InterfaceError, EmbedderUnavailable)

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


def _process(document_id: int, *, reindex: bool) -> None:
    from kb import services
    from kb.models import Document

    try:
        services.document_process(document_id=document_id, reindex=reindex)
    except TRANSIENT:
        raise  # Celery retries with backoff
    except Exception as exc:
        # A bug or an unforeseen input: say so on the document, keep the traceback in the log.
        # During a re-index the document's chunks in use stay, and so does the collection's model.
        logger.exception("%s document %s failed", "re-embedding" if reindex else "ingesting", document_id)
        services.document_mark(
            document_id=document_id,
            status=Document.Status.FAILED,
            error=f"Processing stopped on an unexpected error ({type(exc).__name__}); the worker log has details.",
        )
        raise
