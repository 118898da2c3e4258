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
    from kb import services
    from kb.models import Document

    try:
        services.document_process(document_id=document_id)
    except TRANSIENT:
        raise  # Celery retries with backoff
    except Exception as exc:
        # A bug or an unforeseen input: say so on the document, keep the traceback in the log.
        logger.exception("ingesting document %s failed", document_id)
        services.document_mark(
            document_id=document_id,
            status=Document.Status.FAILED,
            error=f"Processing stopped on an unexpected error ({type(exc).__name__}); the worker log has details.",
        )
        raise


@shared_task(**DOCUMENT_TASK)
def reindex_document(self, document_id: int) -> None:
    """Embed one ready document again; its old chunks serve searches until the new ones replace them."""
    from kb import services

    services.document_process(document_id=document_id, reindex=True)
