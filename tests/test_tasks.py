"""The ingest task on a real Celery worker: a worker process killed mid-task loses nothing."""

import io
import os
import signal
import time

import psutil
import pytest

from kb import services
from kb.access import system_user
from kb.models import Chunk, Document
from tests.factories import make_collection

pytestmark = pytest.mark.django_db(transaction=True)


def long_document(sections: int = 60) -> str:
    body = " ".join(f"Replica {i} keeps a nightly snapshot of the archive volume." for i in range(25))
    return "\n\n".join(f"# Runbook\n\n## Step {s}\n\n{body}" for s in range(sections))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_pool_process_killed_mid_task_is_redelivered_and_the_document_completes(celery_worker_process):
    collection = make_collection()
    outcome = services.document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(long_document().encode()), source_path="runbook.md"
    )
    document = outcome.document
    wait_for(
        lambda: Document.objects.filter(pk=document.pk, stage="embedding", progress_done__gt=0).exists(),
        timeout=120,
        what="embedding to start",
    )
    children = psutil.Process(celery_worker_process.pid).children()
    assert children, "the prefork pool should run the task in a child process"
    for child in children:
        os.kill(child.pid, signal.SIGKILL)

    wait_for(lambda: Document.objects.get(pk=document.pk).status == Document.Status.READY, 180, "the document")
    document.refresh_from_db()
    chunks = Chunk.objects.filter(document=document)
    assert document.chunk_count == chunks.count() > 50
    assert sorted(chunks.values_list("ordinal", flat=True)) == list(range(document.chunk_count))
    assert "worker" not in document.error
