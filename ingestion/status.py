"""A document's progress while a worker processes it, and recovery of work that went silent.

Every status change goes through Document.objects.transition (kb.models), the state
machine's one door; this module holds the marks the worker makes on its way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingestion import queue
from ingestion.errors import IngestError
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


def document_fail_on_input(*, document_id: int, exc: IngestError, name: str = "") -> None:
    """The file itself cannot be processed: its reason on the document, one warning line in the log.

    Expected (people upload damaged and unsupported files), so no traceback: the line names
    the library's exception behind the reason, when there is one.
    """
    document_mark(document_id=document_id, status=Document.Status.FAILED, error=str(exc))
    cause = exc.__cause__
    detail = f" [{type(cause).__name__}: {_one_line(str(cause))}]" if cause is not None else ""
    logger.warning("document %s %sfailed: %s%s", document_id, f"({name}) " if name else "", exc, detail)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def document_fail_unexpectedly(*, document_id: int, exc: BaseException, reindex: bool = False) -> None:
    """A bug or an unforeseen input: say so on the document, keep the traceback in the log."""
    if isinstance(exc, SoftTimeLimitExceeded):
        # Not a bug and no traceback to read: the task ran out of the time Celery gives it.
        limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
        logger.warning("document %s stopped at the task's soft time limit (%s s)", document_id, limit)
        document_mark(
            document_id=document_id,
            status=Document.Status.FAILED,
            error=(
                f"Processing took longer than the {limit} seconds one document may take (KB_TASK_TIME_LIMIT) "
                "and was stopped; the file may be very large or complex. Split it, or ask an administrator to "
                "raise the limit, then upload it again."
            ),
        )
        return
    logger.error("%s document %s failed", "re-embedding" if reindex else "ingesting", document_id, exc_info=exc)
    document_mark(
        document_id=document_id,
        status=Document.Status.FAILED,
        error=f"Processing stopped on an unexpected error ({type(exc).__name__}); the worker log has details.",
    )


def documents_claim(document_ids: list[int]) -> None:
    """Mark a task's queued documents as in its hands ("processing", no stage yet) before it starts on them.

    A task of many pages parses them one after another; if its worker dies meanwhile, the pages
    not reached yet must look as abandoned as the others (silent "processing", re-queued within
    minutes), not as waiting their turn in the broker (re-sent only after KB_QUEUED_LOST_SECONDS).
    """
    Document.objects.filter(pk__in=document_ids, status=Document.Status.QUEUED).transition(
        Document.Status.PROCESSING, stage="", progress_done=0, progress_total=0
    )


@contextmanager
def heartbeat(document_ids: list[int]) -> Iterator[None]:
    """Keep the documents' heartbeat (updated_at) fresh while this block runs, for stale-job detection.

    Progress marks alone leave long silences (parsing a large PDF marks nothing until it is
    done), so a short KB_STALE_SECONDS would take live work for dead. A thread beating every
    KB_HEARTBEAT_SECONDS makes silence mean what the sweeper assumes: the process is gone
    (killed, out of memory, powered off), and its documents are picked up again within minutes.
    """
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(settings.KB_HEARTBEAT_SECONDS):
                try:
                    Document.objects.filter(pk__in=document_ids, status=Document.Status.PROCESSING).update(
                        updated_at=timezone.now()
                    )
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the task must go on
                    logger.warning("documents %s: heartbeat not recorded: %s", document_ids, exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name="kb-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def documents_recover_stale(*, collection_ids=None) -> dict:
    """Re-queue (once) or fail documents whose processing stopped without a word; resend lost queued ones.

    A working task refreshes updated_at at every progress mark; one silent for longer than
    KB_STALE_SECONDS has died without Celery redelivering it (a whole worker killed: Redis
    would hand its message back only after the visibility timeout, an hour later). A document
    queued and never started for KB_QUEUED_LOST_SECONDS is sent again (the broker lost it).
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
        # Queued and never picked up for long: its message may be lost (a broker restarted
        # without persistence). Send it again; if the first message was only waiting behind a
        # backlog, the task finds the work done or in hand and returns, so the copy costs little.
        # A longer wait than for silent processing: a backlog of thousands is resent each period.
        queued_cutoff = timezone.now() - timezone.timedelta(seconds=settings.KB_QUEUED_LOST_SECONDS)
        lost = Document.objects.select_for_update(skip_locked=True).filter(
            status=Document.Status.QUEUED, updated_at__lt=queued_cutoff
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
