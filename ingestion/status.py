"""A document's progress while a worker processes it, and recovery of work that went silent.

Every status change goes through Document.objects.transition (kb.models), the state
machine's one door; this module holds the marks the worker makes on its way.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ingestion import queue
from kb.models import Document

logger = logging.getLogger(__name__)


class DocumentCancelled(Exception):
    """The document's batch was cancelled while the worker processed it."""


def document_mark(
    *, document_id: int, status: str, stage: str = "", done: int = 0, total: int = 0, error: str = ""
) -> bool:
    """Record a document's state and progress (used by the worker while it runs); False if it was cancelled.

    Each mark also refreshes updated_at, the heartbeat that stale-job detection reads.
    """
    return bool(
        Document.objects.filter(pk=document_id).transition(
            status, stage=stage, progress_done=done, progress_total=total, error=error
        )
    )


def group_progress(document_ids: list[int], progress=None):
    """progress(done, total) for a shared embedding pass: marks its documents, stops when all are cancelled."""

    def mark(done: int, total: int) -> None:
        marked = Document.objects.filter(pk__in=document_ids).transition(
            Document.Status.PROCESSING, stage="embedding", progress_done=done, progress_total=total
        )
        if not marked:
            raise DocumentCancelled
        if progress is not None:
            progress(done, total)

    return mark


def document_fail_unexpectedly(*, document_id: int, exc: BaseException, reindex: bool = False) -> None:
    """A bug or an unforeseen input: say so on the document, keep the traceback in the log."""
    logger.error("%s document %s failed", "re-embedding" if reindex else "ingesting", document_id, exc_info=exc)
    document_mark(
        document_id=document_id,
        status=Document.Status.FAILED,
        error=f"Processing stopped on an unexpected error ({type(exc).__name__}); the worker log has details.",
    )


def documents_recover_stale(*, collection_ids=None) -> dict:
    """Re-queue (once) or fail documents whose processing stopped without a word; resend lost queued ones.

    A working task refreshes updated_at at every progress mark; one silent for longer than
    KB_STALE_SECONDS has died without Celery redelivering it (e.g. Redis lost the message).
    Run periodically by celery beat (ingestion.tasks.recover_stale_documents) and by
    `kb_ingest --wait`; never by a page view.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.KB_STALE_SECONDS)
    result = {"requeued": 0, "failed": 0}
    with transaction.atomic():
        stale = Document.objects.select_for_update(skip_locked=True).filter(
            status=Document.Status.PROCESSING, updated_at__lt=cutoff
        )
        if collection_ids is not None:
            stale = stale.in_collections(collection_ids)
        for document in stale:
            row = Document.objects.filter(pk=document.pk)
            if document.attempts < settings.KB_MAX_ATTEMPTS:
                row.transition(Document.Status.QUEUED, stage="", progress_done=0, progress_total=0, error="")
                queue.ingest(document.pk)
                result["requeued"] += 1
            else:
                row.transition(Document.Status.FAILED, stage="", progress_done=0, progress_total=0, error=(
                    f"Processing stopped without finishing {document.attempts} times (the worker may have "
                    "crashed or run out of memory); upload the file again or ask an administrator."
                ))  # fmt: skip
                result["failed"] += 1
        # Queued and never picked up for as long: its message may be lost (a broker restarted
        # without persistence). Send it again; if the first message was only waiting behind a
        # backlog, the task finds the work done or in hand and returns, so the copy costs nothing.
        lost = Document.objects.select_for_update(skip_locked=True).filter(
            status=Document.Status.QUEUED, updated_at__lt=cutoff
        )
        if collection_ids is not None:
            lost = lost.in_collections(collection_ids)
        for document in lost:
            Document.objects.filter(pk=document.pk).transition(Document.Status.QUEUED)  # a fresh heartbeat
            queue.ingest(document.pk)
            result["requeued"] += 1
    if result["requeued"] or result["failed"]:
        logger.warning("stale documents: %s", result)
    return result
