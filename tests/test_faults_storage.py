"""A full disk or an unwritable upload folder refuses the upload with a message (issue 17):
no row without a file, no file without a row.

The folder is a real tmpfs of 1 MB (full) or remounted read-only, so the errors are the
kernel's own (ENOSPC, EROFS). Mounting needs root, which this machine and CI have; elsewhere the
test says so and skips.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.urls import reverse

from kb.models import Document
from tests.factories import make_collection, make_user, upload
from tests.helpers import record_fault

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_disk(tmp_path, settings) -> Iterator[Path]:
    """MEDIA_ROOT on a 1 MB tmpfs of its own."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    settings.MEDIA_ROOT = folder
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _upload(client, collection, name: str, data: bytes, htmx: bool):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(reverse("document_upload", args=[collection.pk]), {"files": [upload(name, data)]}, **headers)


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
def test_an_upload_to_a_full_disk_is_refused_with_a_message_and_leaves_nothing(small_disk, client, htmx):
    editor = make_user()
    collection = make_collection(editor=[editor])
    client.force_login(editor)
    # Fills most of the disk; the next file no longer fits.
    first = _upload(client, collection, "first.md", b"# First\n\n" + b"word " * 150_000, htmx)
    assert first.status_code in (200, 302)
    assert Document.objects.filter(collection=collection).count() == 1

    response = _upload(client, collection, "second.md", b"# Second\n\n" + b"more " * 100_000, htmx)
    assert response.status_code in (200, 302)
    page = client.get(reverse("collection_detail", args=[collection.pk])).content.decode() if not htmx else ""
    said = response.content.decode() + page
    assert "second.md was not stored" in said and "its disk is full" in said, said[-3000:]
    assert not Document.objects.filter(collection=collection, source_path="second.md").exists(), "no row without a file"
    stored = {d.file.name.rsplit("/", 1)[-1] for d in Document.objects.filter(collection=collection)}
    assert {p.name for p in _files(small_disk)} == stored, "no file without a row"
    record_fault("disk_full_upload", htmx=htmx, files_on_disk=len(_files(small_disk)), documents=len(stored))


def test_an_upload_to_a_read_only_folder_is_refused_with_a_message_and_leaves_nothing(small_disk, client):
    editor = make_user()
    collection = make_collection(editor=[editor])
    client.force_login(editor)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        response = _upload(client, collection, "notes.md", b"# Notes\n\nSome text.", htmx=True)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    said = response.content.decode()
    assert "notes.md was not stored" in said and "read-only" in said, said[-3000:]
    assert not Document.objects.filter(collection=collection).exists()
    assert not _files(small_disk)


def test_the_json_api_refuses_an_upload_to_a_full_disk_with_the_reason(small_disk, client):
    from kb.services.tokens import api_token_create

    editor = make_user()
    collection = make_collection(editor=[editor])
    raw = api_token_create(user=editor, name="disk")[1]
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(1000 * 1024))  # the disk is now (nearly) full
    response = client.post(
        reverse("api_documents_upload", args=[collection.pk]),
        {"files": [upload("big.md", b"# Big\n\n" + b"text " * 20_000)]},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 400
    assert "its disk is full" in response.json()["documents"][0]["error"]
    assert not Document.objects.filter(collection=collection).exists()
    assert _files(small_disk) == [filler]
