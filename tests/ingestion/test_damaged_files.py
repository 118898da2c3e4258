"""Damaged and unreadable uploads fail on their document with a reason a person understands.

Each file goes the way an upload goes: stored by the upload service, then processed by
document_process, the function the Celery task runs. The operator's log (INFO and up, the
default KB_LOG_LEVEL) gets one warning line per such file and no traceback.
"""

from __future__ import annotations

import functools
import io
import logging
import zipfile

import pytest
from django.core.files.storage import default_storage

from ingestion.processing import document_process
from kb.access import system_user
from kb.models import Document
from kb.services.documents import batch_add_file, batch_create, document_upload
from tests.factories import make_collection, upload

pytestmark = pytest.mark.django_db


def _docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Backup policy", level=1)
    document.add_paragraph("Backups run nightly at 02:00.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _with_member(package: bytes, name: str, data: bytes) -> bytes:
    """The ZIP package with one member's bytes replaced (every other member as it was)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, data if info.filename == name else source.read(info))
    return out.getvalue()


@functools.cache
def _pdf() -> bytes:
    """A PDF written by pypdf (compressed content streams, cross-reference table, %%EOF)."""
    from pypdf import PdfReader, PdfWriter

    from tests.ingestion.builders import pdf_bytes

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(["Backups run nightly.", "Restores weekly."]))))
    for page in writer.pages:
        page.compress_content_streams()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _zip(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()


# As a new user met them: python-docx expects the OPC namespace on [Content_Types].xml and
# failed with AttributeError ("Processing stopped on an unexpected error"); a PDF cut short
# put pypdf's traceback on the worker's terminal.
CONTENT_TYPES_WITHOUT_NAMESPACE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Types><Default Extension="xml" ContentType="application/xml"/></Types>'
)

CASES = {
    "corrupt-content-types.docx": (
        lambda: _with_member(_docx(), "[Content_Types].xml", CONTENT_TYPES_WITHOUT_NAMESPACE),
        "The Word document is damaged: it could not be opened as a .docx file.",
    ),
    "truncated.pdf": (
        lambda: _pdf()[: len(_pdf()) // 2],  # a download or copy cut short
        "The PDF is truncated (its end is missing), so it cannot be read",
    ),
    "garbled-xref.pdf": (
        # The first objects overwritten, the end (%%EOF) intact: damaged, not cut short.
        lambda: _pdf()[:15] + b"\x00garbage)>>]" * 40 + _pdf()[15 + 480 :],
        "The PDF is damaged",
    ),
    "bad-xml.docx": (
        lambda: _with_member(_docx(), "word/document.xml", b"<w:document><w:body><w:p>cut sho"),
        "The Word document is damaged",
    ),
    "nested.html": (
        lambda: b"<html><body>" + b"<div>" * 5000 + b"deep" + b"</div>" * 5000 + b"</body></html>",
        "The HTML page is nested too deeply to read",
    ),
    "notes.md": (
        lambda: "# Привет\n\nЭто заметки о резервном копировании.\n".encode("koi8-r"),
        "The file is not UTF-8 text and its encoding could not be recognised",
    ),
    "dump.txt": (
        lambda: bytes(range(256)) * 16,
        "This file does not contain text (it looks like binary data).",
    ),
    "cut.zip": (
        lambda: _zip({"ops/backups.md": "# Backups\n\nNightly.", "ops/restore.md": "# Restore\n\nWeekly."})[:-30],
        "The ZIP archive is damaged (its list of files cannot be read)",
    ),
}


def _tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_file_fails_with_its_reason_and_no_traceback(name, caplog):
    make, reason = CASES[name]
    collection = make_collection()
    caplog.set_level(logging.INFO)
    # The upload service a browser upload goes through, ZIP archives included.
    batch = batch_create(user=system_user(), collection=collection, label=name)
    batch_add_file(user=system_user(), batch=batch, file=upload(name, make()), name=name, enqueue=False)
    document = Document.objects.get(collection=collection, source_path=name)

    document_process(document_id=document.pk)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert reason in document.error
    assert "unexpected" not in document.error and "Error" not in document.error
    assert default_storage.exists(document.file.name), "the uploaded file is kept"
    assert _tracebacks(caplog) == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]  # pypdf's own included
    assert len(warnings) == 1 and f"document {document.pk} ({name}) failed: {reason}" in warnings[0].getMessage()


def test_a_failed_document_can_be_processed_again_and_a_repaired_upload_replaces_it(caplog):
    collection = make_collection()
    make, reason = CASES["corrupt-content-types.docx"]
    outcome = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(make()), source_path="policy.docx", enqueue=False
    )
    document_process(document_id=outcome.document.pk)
    document_process(document_id=outcome.document.pk)  # processing again: the same verdict, no traceback
    outcome.document.refresh_from_db()
    assert outcome.document.status == Document.Status.FAILED and reason in outcome.document.error

    repaired = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(_docx()), source_path="policy.docx", enqueue=False
    )
    assert repaired.outcome == "updated" and repaired.document.pk == outcome.document.pk
    document_process(document_id=repaired.document.pk)
    repaired.document.refresh_from_db()
    assert repaired.document.status == Document.Status.READY and repaired.document.error == ""
    assert "nightly" in " ".join(repaired.document.chunks.values_list("text", flat=True))
    assert _tracebacks(caplog) == []


def test_front_matter_with_an_impossible_date_is_ignored_and_the_page_is_read(caplog):
    collection = make_collection()
    page = "---\ntitle: Restores\ndate: 2024-13-45\n---\n# Restores\n\nRestores are tested weekly.\n"
    outcome = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(page.encode()), source_path="restores.md",
        enqueue=False,
    )  # fmt: skip
    document_process(document_id=outcome.document.pk)
    outcome.document.refresh_from_db()
    assert outcome.document.status == Document.Status.READY
    assert outcome.document.title == "Restores"
    assert _tracebacks(caplog) == []


def test_reading_longer_than_kb_read_timeout_fails_the_document_saying_so(settings, caplog):
    settings.KB_READ_TIMEOUT = 0.000001
    collection = make_collection()
    page = ("# Title\n\n" + "Words and more words. " * 20_000).encode()
    outcome = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(page), source_path="long.md", enqueue=False
    )
    document_process(document_id=outcome.document.pk)
    outcome.document.refresh_from_db()
    assert outcome.document.status == Document.Status.FAILED
    assert "Reading the file took longer than 1e-06 seconds (KB_READ_TIMEOUT)" in outcome.document.error
    assert _tracebacks(caplog) == []


def test_the_task_soft_time_limit_fails_the_document_in_plain_words(monkeypatch, caplog):
    from celery.exceptions import SoftTimeLimitExceeded

    from ingestion import pipeline, tasks

    def soft_time_limit_standin(*args, **kwargs):
        raise SoftTimeLimitExceeded  # what Celery raises in the task at KB_TASK_TIME_LIMIT - 60 s

    monkeypatch.setattr(pipeline, "parse_and_chunk", soft_time_limit_standin)
    collection = make_collection()
    outcome = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(b"# Big\n\nText."), source_path="big.md",
        enqueue=False,
    )  # fmt: skip
    tasks.ingest_document.apply(args=[outcome.document.pk])
    outcome.document.refresh_from_db()
    assert outcome.document.status == Document.Status.FAILED
    assert "Processing took longer than the" in outcome.document.error
    assert "(KB_TASK_TIME_LIMIT)" in outcome.document.error and "unexpected" not in outcome.document.error
    assert [r for r in _tracebacks(caplog) if r.name.startswith("ingestion")] == []


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_stops_a_read_at_kb_read_timeout_and_logs_no_traceback():
    import time

    from tests.helpers import ARTIFACTS, celery_worker

    collection = make_collection()
    # A prefork pool process, as in production: the alarm must reach the reader there.
    with celery_worker({"KB_READ_TIMEOUT": "0.000001"}, name="worker-readers") as worker:
        outcome = document_upload(
            user=system_user(), collection=collection, file=io.BytesIO(b"# Page\n\n" + b"Words. " * 50_000),
            source_path="page.md",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        document = outcome.document
        while document.status not in (Document.Status.FAILED, Document.Status.READY) and time.monotonic() < deadline:
            time.sleep(0.2)
            document.refresh_from_db()
        assert worker.poll() is None, "the worker survives"
    assert document.status == Document.Status.FAILED
    assert document.error.startswith("Reading the file took longer than 1e-06 seconds (KB_READ_TIMEOUT)")
    log = (ARTIFACTS / "worker-readers.log").read_text()
    assert f"document {document.pk} (page.md) failed: Reading the file took longer" in log
    assert "Traceback" not in log
