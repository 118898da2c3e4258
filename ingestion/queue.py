"""Background work is queued here, by task name, after the caller's transaction commits.

By name rather than by importing ingestion.tasks: the tasks call the processing code, and
the processing code (and the services above it) queue further tasks, so importing the
task objects would tie those modules in a loop. Celery resolves the name in the app's
registry when the message is sent; tests/test_queue.py checks every name is a registered
task, so a rename cannot go unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import current_app
from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

INGEST_DOCUMENT = "ingestion.tasks.ingest_document"
INGEST_DOCUMENTS = "ingestion.tasks.ingest_documents"
REINDEX_DOCUMENT = "ingestion.tasks.reindex_document"
SYNC_SOURCE = "ingestion.tasks.sync_source"
TASK_NAMES = (INGEST_DOCUMENT, INGEST_DOCUMENTS, REINDEX_DOCUMENT, SYNC_SOURCE)


def _task(name: str):
    if name not in current_app.tasks:
        # Outside the worker nothing has imported the task modules yet: the app's
        # autodiscovery (kb.celery) runs when its default modules are imported.
        current_app.loader.import_default_modules()
    return current_app.tasks[name]


def _on_commit(name: str, *args) -> None:
    # As DjangoTask.delay_on_commit: the message leaves only once the rows it names are visible
    # to the worker, and not at all if the transaction rolls back.
    transaction.on_commit(lambda: _send(name, *args))


def _send(name: str, *args) -> None:
    """Send a task, or leave its rows queued for the sweep when the broker is unreachable.

    The rows are committed by now: an upload made while Redis restarts is kept and reported
    as queued, not answered with an error, and celery beat's sweep sends it again
    (KB_QUEUED_LOST_SECONDS; a sync's schedule comes round again by itself).
    """
    try:
        _task(name).delay(*args)
    except OperationalError as exc:  # kombu's: the broker refused or timed out after its retries
        logger.warning("%s%s not queued, the broker is unreachable (%s); it is sent again later", name, args, exc)


def ingest(document_id: int) -> None:
    """Parse, chunk, embed and store one document, once the caller's transaction commits."""
    _on_commit(INGEST_DOCUMENT, document_id)


def ingest_group(document_ids: Iterable[int]) -> None:
    """Queue many documents (an archive's pages) as tasks of up to KB_INGEST_GROUP each.

    Each task embeds its documents' chunks in one pass (documents_process): a wiki export is
    mostly small pages, and one task per page embeds a few chunks at a time in small,
    ragged batches (3.5 × slower on every 20th page of the PostgreSQL manual, docs/benchmarks.md).
    """
    document_ids = list(document_ids)
    size = max(1, settings.KB_INGEST_GROUP)
    for first in range(0, len(document_ids), size):
        _on_commit(INGEST_DOCUMENTS, document_ids[first : first + size])


def reindex(document_id: int, *, after_commit: bool = True) -> None:
    """Embed one document again for its collection's running re-index, once the caller commits.

    after_commit=False sends at once, for a caller outside any transaction whose re-index
    state is committed already (kb.services.reindex queues a whole collection that way).
    """
    if after_commit:
        _on_commit(REINDEX_DOCUMENT, document_id)
    else:
        _task(REINDEX_DOCUMENT).delay(document_id)


def sync_source(source_id: int, trigger: str) -> None:
    """Run one sync of a source in a worker, once the caller's transaction commits."""
    _on_commit(SYNC_SOURCE, source_id, trigger)
