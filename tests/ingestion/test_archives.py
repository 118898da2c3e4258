"""ZIP wiki exports: pages become documents, re-uploads sync, and unsafe archives are refused."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
from django.core.exceptions import ValidationError

from ingestion.processing import document_process
from kb.access import system_user
from kb.models import Chunk, Document, UploadBatch
from kb.services.documents import archive_upload, batch_add_file, batch_create, document_upload
from tests.factories import make_collection
from tests.ingestion.builders import make_zip, write_docx

pytestmark = pytest.mark.django_db

BACKUPS = """---
title: Backup Guide
owner: platform team
tags: [ops, storage]
---
# Backups

Backups of every server run nightly. See [restore](restore.md#steps) and [the index](../index.md),
or [the vendor](https://example.com/docs).
"""
RESTORE = "# Restore\n\nCopy the snapshot back and restart the service.\n"
INDEX = "<html><body><main><h1>Team wiki</h1><p>Start at <a href='ops/backups.md'>backups</a>.</p></main></body></html>"


def mark_encrypted(buffer: io.BytesIO, member: str) -> io.BytesIO:
    """Set the 'encrypted' flag of one member in both its local and central headers, as an encrypting tool would."""
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo(member)
    data[info.header_offset + 6] |= 0x01  # local file header: general purpose bit flag
    central = data.find(b"PK\x01\x02")
    name = member.encode()
    while central >= 0:
        name_len = int.from_bytes(data[central + 28 : central + 30], "little")
        if bytes(data[central + 46 : central + 46 + name_len]) == name:
            data[central + 8] |= 0x01
            break
        central = data.find(b"PK\x01\x02", central + 4)
    return io.BytesIO(bytes(data))


def sync(collection, files, *, name="wiki.zip", process=True) -> dict:
    batch = batch_create(user=system_user(), collection=collection, label=name)
    archive = files if isinstance(files, io.BytesIO) else make_zip(files)
    summary = batch_add_file(user=system_user(), batch=batch, file=archive, name=name, enqueue=False)
    if process:
        for document in Document.objects.filter(batch=batch, status=Document.Status.QUEUED):
            document_process(document_id=document.pk)
    return summary


WIKI = {"index.html": INDEX, "ops/backups.md": BACKUPS, "ops/restore.md": RESTORE, "ops/img/diagram.png": b"\x89PNG"}


def test_each_page_becomes_a_document_named_by_its_path_inside_the_archive():
    collection = make_collection()
    summary = sync(collection, WIKI)

    assert (summary.created, summary.ignored, summary.errors) == (3, 1, [])
    documents = {d.source_path: d for d in Document.objects.filter(collection=collection)}
    assert set(documents) == {"index.html", "ops/backups.md", "ops/restore.md"}
    assert all(d.status == Document.Status.READY and d.source_archive == "wiki.zip" for d in documents.values())
    backups = documents["ops/backups.md"]
    assert backups.breadcrumb == ["ops"]
    assert backups.title == "Backup Guide"
    assert backups.metadata["front_matter"] == {
        "title": "Backup Guide",
        "owner": "platform team",
        "tags": ["ops", "storage"],
    }
    assert backups.metadata["links"] == ["ops/restore.md", "index.md"]  # relative links, resolved; URLs left out
    assert documents["index.html"].metadata["links"] == ["ops/backups.md"]
    assert Chunk.objects.filter(document=backups).exists()


def test_uploading_the_archive_again_adds_new_replaces_changed_and_removes_vanished_pages():
    collection = make_collection()
    sync(collection, WIKI)
    before = {d.source_path: d for d in Document.objects.filter(collection=collection)}
    old_restore_chunks = set(Chunk.objects.filter(document=before["ops/restore.md"]).values_list("pk", flat=True))

    changed = {
        "index.html": INDEX,  # unchanged
        "ops/restore.md": RESTORE.replace("restart the service", "run the integrity check"),  # changed
        "ops/monitoring.md": "# Monitoring\n\nAlerts go to whoever is on call.\n",  # new
    }  # ops/backups.md vanished
    summary = sync(collection, changed)

    assert {k: getattr(summary, k) for k in ("created", "updated", "unchanged", "removed")} == {
        "created": 1,
        "updated": 1,
        "unchanged": 1,
        "removed": 1,
    }
    assert summary.removed_paths == ["ops/backups.md"]
    after = {d.source_path: d for d in Document.objects.filter(collection=collection)}
    assert set(after) == {"index.html", "ops/restore.md", "ops/monitoring.md"}
    assert after["index.html"].pk == before["index.html"].pk
    assert after["ops/restore.md"].pk == before["ops/restore.md"].pk
    restore_text = " ".join(Chunk.objects.filter(document=after["ops/restore.md"]).values_list("text", flat=True))
    assert "integrity check" in restore_text and "restart the service" not in restore_text
    assert not Chunk.objects.filter(pk__in=old_restore_chunks).exists()
    assert not Chunk.objects.filter(document_id=before["ops/backups.md"].pk).exists()


def test_a_sync_leaves_pages_of_other_uploads_alone():
    collection = make_collection()
    document_upload(
        user=system_user(),
        collection=collection,
        file=io.BytesIO(b"# Loose\n\nA single file."),
        source_path="loose.md",
        enqueue=False,
    )
    sync(collection, {"a.md": "# A\n\nFirst page."}, name="one.zip")
    sync(collection, {"b.md": "# B\n\nSecond page."}, name="two.zip")
    sync(collection, {"a2.md": "# A2\n\nReplacement page."}, name="one.zip")

    assert set(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == {
        "loose.md",
        "b.md",
        "a2.md",
    }


def test_members_with_absolute_or_climbing_paths_are_refused_and_the_rest_goes_in():
    collection = make_collection()
    archive = make_zip(
        {"../../etc/cron.d/evil.md": "# Evil", "/abs/root.md": "# Root", "ok/page.md": "# Fine\n\nKept."}
    )
    summary = sync(collection, archive)

    refused = {e["source"]: e["reason"] for e in summary.errors}
    assert set(refused) == {"../../etc/cron.d/evil.md", "/abs/root.md"}
    assert all("climbs out of the archive" in reason for reason in refused.values())
    assert list(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == ["ok/page.md"]


def test_an_encrypted_member_is_refused_with_a_reason_and_the_rest_goes_in():
    collection = make_collection()
    archive = mark_encrypted(
        make_zip({"secret.md": "# Secret\n\nHidden.", "open.md": "# Open\n\nVisible."}), "secret.md"
    )
    summary = sync(collection, archive)

    assert summary.errors == [
        {"source": "secret.md", "reason": "Refused: the file is encrypted inside the archive."}
    ]
    assert list(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == ["open.md"]


def test_a_zip_bomb_is_refused_whole_before_anything_is_unpacked(settings):
    collection = make_collection()
    bomb = make_zip({"page.md": "# Page\n\nText.", "huge.md": b"\0" * (20 << 20)})  # ~20 kB that unpack to 20 MB

    summary = sync(collection, bomb)

    assert summary.refused == 1 and not Document.objects.filter(collection=collection).exists()
    assert "decompression bomb: huge.md expands" in summary.errors[0]["reason"]
    assert "KB_ARCHIVE_MAX_RATIO" in summary.errors[0]["reason"]


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("KB_ARCHIVE_MAX_MEMBERS", 3, "holds 4 files; the limit is 3 (KB_ARCHIVE_MAX_MEMBERS)"),
        ("KB_ARCHIVE_MAX_TOTAL_MB", 1, "would unpack to 2 MB; the limit is 1 MB (KB_ARCHIVE_MAX_TOTAL_MB)"),
    ],
)
def test_archive_limits_are_configurable_and_refuse_the_archive_with_a_reason(settings, setting, value, reason):
    setattr(settings, setting, value)
    collection = make_collection()
    pages = {f"p{n}.md": f"# Page {n}\n\n" + "word " * (100_000 + n) for n in range(4)}  # ~0.5 MB each

    summary = sync(collection, pages, process=False)

    assert summary.refused == 1 and reason in summary.errors[0]["reason"]
    assert not Document.objects.filter(collection=collection).exists()


def test_an_oversize_member_is_refused_by_kb_max_upload_mb(settings):
    settings.KB_MAX_UPLOAD_MB = 1
    collection = make_collection()
    summary = sync(collection, {"big.txt": os.urandom(600 * 1024).hex(), "small.md": "# Small\n\nFits."}, process=False)

    assert [e["source"] for e in summary.errors] == ["big.txt"]
    assert "limit is 1 MB (KB_MAX_UPLOAD_MB)" in summary.errors[0]["reason"]
    assert list(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == ["small.md"]


def test_a_damaged_archive_fails_as_a_document_with_a_reason():
    collection = make_collection()
    damaged = io.BytesIO(make_zip({"a.md": "# A\n\nText."}).getvalue()[:-30])  # central directory cut off

    sync(collection, damaged, name="broken.zip")

    document = Document.objects.get(collection=collection)
    assert (document.source_path, document.status) == ("broken.zip", Document.Status.FAILED)
    assert "damaged" in document.error


def test_a_docx_that_is_a_decompression_bomb_fails_with_a_reason(tmp_path):
    path = write_docx(tmp_path / "bomb.docx", lambda d: d.add_paragraph("Innocent."))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/padding.bin", b"\0" * (30 << 20))
    collection = make_collection()
    outcome = document_upload(
        user=system_user(), collection=collection, file=path.open("rb"), source_path="bomb.docx", enqueue=False
    )
    document_process(document_id=outcome.document.pk)

    outcome.document.refresh_from_db()
    assert outcome.document.status == Document.Status.FAILED
    assert "decompression bomb" in outcome.document.error and "padding.bin" in outcome.document.error


def test_kb_ingest_takes_archives_and_reports_the_sync(tmp_path):
    from django.core.management import call_command

    archive_path = tmp_path / "wiki.zip"
    archive_path.write_bytes(make_zip(WIKI).getvalue())
    out = io.StringIO()
    call_command("kb_ingest", str(archive_path), "--collection", "Wiki", "--create", "--inline", "--json", stdout=out)
    first = json.loads(out.getvalue())
    assert (first["created"], first["failed"], first["ignored"]) == (3, 0, 1)
    assert first["chunks"] > 0

    archive_path.write_bytes(make_zip({"index.html": INDEX}).getvalue())
    out = io.StringIO()
    call_command("kb_ingest", str(archive_path), "--collection", "Wiki", "--inline", "--json", stdout=out)
    second = json.loads(out.getvalue())
    assert (second["unchanged"], second["removed"]) == (1, 2)
    assert second["removed_paths"] == ["ops/backups.md", "ops/restore.md"]
    assert list(Document.objects.values_list("source_path", flat=True)) == ["index.html"]
    assert UploadBatch.objects.count() == 2


def test_an_archive_named_with_a_climbing_path_is_refused():
    collection = make_collection()
    with pytest.raises(ValidationError):
        archive_upload(
            user=system_user(), collection=collection, file=make_zip({"a.md": "# A"}), name="../wiki.zip", enqueue=False
        )
