"""The ingest task on a real Celery worker: a worker process killed mid-task loses nothing."""

import io
import os
import signal
import time

import psutil
import pytest

from kb.access import system_user
from kb.models import Chunk, Document
from kb.services.documents import batch_cancel, batch_upload, document_upload
from tests.corpus import long_document
from tests.factories import make_collection
from tests.ingestion.builders import make_zip, pdf_bytes, write_docx, write_pdf

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_pool_process_killed_mid_task_is_redelivered_and_the_document_completes(celery_worker_process):
    collection = make_collection()
    outcome = document_upload(
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


def test_a_batch_of_bad_files_fails_each_with_a_reason_while_the_rest_goes_in_and_the_worker_survives(
    celery_worker_process, tmp_path, settings
):
    """Every bad-input case of the issue, in one browser-style batch, through the real worker."""
    import zipfile

    settings.KB_MAX_UPLOAD_MB = 1
    encrypted = write_pdf(tmp_path / "secret.pdf", ["Hidden."], user_password="pw", owner_password="o").read_bytes()
    bomb_docx = write_docx(tmp_path / "bomb.docx", lambda d: d.add_paragraph("Innocent."))
    with zipfile.ZipFile(bomb_docx, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/padding.bin", b"\0" * (30 << 20))
    files = {
        "empty.md": b"",
        "photo.txt": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # an image named .txt: sniffed by content
        "report.pdf": b"Plain text saved under a PDF name.\n",
        "secret.pdf": encrypted,
        "broken.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 8,
        "bomb.docx": bomb_docx.read_bytes(),
        "bomb.zip": make_zip({"huge.md": b"\0" * (20 << 20)}).getvalue(),
        "escape.zip": make_zip(
            {"../../outside.md": "# Out", "inside.md": "# Inside\n\nKept from the archive."}
        ).getvalue(),
        "huge.txt": b"word " * (300 * 1024),
        "cyrillic.txt": "Привет, как дела? Это тест кодировки.".encode("koi8-r"),
        "good.md": b"# Good\n\nThis one is searchable.",
        "scan.pdf": pdf_bytes(["Page one has text."]),
    }
    collection = make_collection()
    from django.core.files.uploadedfile import SimpleUploadedFile

    summary = batch_upload(
        user=system_user(), collection=collection, files=[SimpleUploadedFile(n, d) for n, d in files.items()]
    )
    refused = {e["source"]: e["reason"] for e in summary.errors}
    assert refused["empty.md"] == "empty.md is empty."
    assert "limit is 1 MB" in refused["huge.txt"]
    assert "decompression bomb" in refused["bomb.zip"]
    assert "climbs out of the archive" in refused["../../outside.md"]

    documents = Document.objects.filter(collection=collection)
    wait_for(lambda: not documents.exclude(status__in=["ready", "failed"]).exists(), 180, "the batch to finish")
    outcome = {d.source_path: (d.status, d.error) for d in documents}
    expected_failures = {
        "photo.txt": "a PNG image",
        "report.pdf": "named .pdf but is not a PDF",
        "secret.pdf": "encrypted",
        "broken.pdf": "damaged",
        "bomb.docx": "decompression bomb",
        "cyrillic.txt": "not UTF-8 text",
    }
    for name, reason in expected_failures.items():
        status, error = outcome.pop(name)
        assert status == "failed" and reason in error, (name, error)
    assert outcome == {"good.md": ("ready", ""), "inside.md": ("ready", ""), "scan.pdf": ("ready", "")}
    assert celery_worker_process.poll() is None, "the worker must survive every bad file"


def test_cancelling_a_running_batch_stops_the_worker_mid_document(celery_worker_process, settings):
    collection = make_collection()
    from django.core.files.uploadedfile import SimpleUploadedFile

    batch_upload(
        user=system_user(),
        collection=collection,
        files=[
            # Long: embedding must still be running when the cancel lands, in bf16 on AMX too.
            SimpleUploadedFile("runbook.md", long_document(150).encode()),
            SimpleUploadedFile("later.md", long_document(40).encode()),
        ],
    )
    batch = collection.batches.get()
    wait_for(
        lambda: Document.objects.filter(batch=batch, stage="embedding", progress_done__gt=0).exists(),
        120,
        "embedding to start",
    )
    assert batch_cancel(user=system_user(), batch=batch) == 2

    time.sleep(3)  # give the worker time to reach its next progress mark
    for document in Document.objects.filter(batch=batch):
        assert document.status == Document.Status.CANCELLED and "Cancelled by" in document.error
        assert not Chunk.objects.filter(document=document).exists()
    # The worker is free again: the next upload goes through.
    outcome = document_upload(
        user=system_user(),
        collection=collection,
        file=io.BytesIO(b"# Next\n\nAfter the cancel."),
        source_path="next.md",
    )
    wait_for(lambda: Document.objects.get(pk=outcome.document.pk).status == Document.Status.READY, 120, "next.md")
