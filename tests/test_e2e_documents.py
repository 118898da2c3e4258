"""Documents in Chromium at 1280 and 390 px (issue 15): deleting a document or a collection
with its confirmation and undo, the documents list's search, folders and pages (with the
browser's back button), and an upload's per-document progress."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.models import Document
from kb.services.collections import collection_create
from tests.corpus import BACKUPS, VACATION, long_document
from tests.factories import add_document
from tests.helpers import PASSWORD, sign_in
from tests.ui import check_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _owner_with_collection(name: str = "Operations"):
    owner = User.objects.create_user("owner", password=PASSWORD, is_staff=True)
    collection = collection_create(user=owner, name=name)
    return owner, collection


def test_deleting_a_document_asks_first_and_undo_brings_it_back(sized_page, web_server):
    page, base = sized_page, web_server
    owner, collection = _owner_with_collection()
    backups = add_document(collection, "runbooks/backups.md", BACKUPS, user=owner)
    add_document(collection, "hr/vacation.md", VACATION, user=owner)
    sign_in(page, base, "owner")

    page.goto(f"{base}/documents/{backups.pk}/")
    delete = page.get_by_role("link", name="Delete…")
    expect(delete).to_be_visible()
    # The button reads: its text and its background differ.
    colours = delete.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert colours[0] != colours[1], colours
    check_page(page, "document")

    delete.click()
    expect(page.locator("h1")).to_contain_text("Delete")
    expect(page.locator(".confirm-delete")).to_contain_text("1 document")
    expect(page.locator(".confirm-delete")).to_contain_text(f"{backups.chunk_count} passage")
    check_page(page, "document-delete-confirm")
    page.get_by_role("button", name="Delete document").click()

    expect(page.locator(".undo-flash")).to_contain_text("Deleted runbooks/backups.md")
    expect(page.locator("#documents")).not_to_contain_text("runbooks/backups.md")
    expect(page.locator("#recently-deleted")).to_contain_text("backups")
    check_page(page, "collection-after-delete")

    page.locator(".undo-flash").get_by_role("button", name="Undo").click()
    expect(page.locator(".flash")).to_contain_text("Restored runbooks/backups.md")
    expect(page.locator("#documents")).to_contain_text("runbooks/backups.md")
    expect(page.locator("#recently-deleted")).to_have_count(0)
    assert Document.objects.get(pk=backups.pk).deleted_at is None


def test_deleting_a_collection_needs_its_name_and_can_be_undone_from_home(sized_page, web_server):
    page, base = sized_page, web_server
    owner, collection = _owner_with_collection()
    add_document(collection, "runbooks/backups.md", BACKUPS, user=owner)
    sign_in(page, base, "owner")

    page.goto(f"{base}/collections/{collection.pk}/access/")
    page.get_by_role("link", name=re.compile("^Delete Operations")).click()
    expect(page.locator(".confirm-delete")).to_contain_text("1 document")
    page.get_by_label("Type Operations to confirm").fill("operations")
    page.get_by_role("button", name="Delete collection").click()
    expect(page.locator(".confirm-delete .error")).to_contain_text("nothing was deleted")
    check_page(page, "collection-delete-confirm")

    page.get_by_label("Type Operations to confirm").fill("Operations")
    page.get_by_role("button", name="Delete collection").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".undo-flash")).to_contain_text("Deleted the collection Operations: 1 document")
    expect(page.locator("#recently-deleted")).to_contain_text("Operations")
    check_page(page, "home-after-collection-delete")
    assert page.goto(f"{base}/collections/{collection.pk}/").status == 404

    page.goto(f"{base}/")
    page.locator("#recently-deleted").get_by_role("button", name="Undo: restore Operations").click()
    expect(page.locator("h1")).to_have_text("Operations")
    expect(page.locator("#documents")).to_contain_text("runbooks/backups.md")


def test_the_documents_list_searches_filters_folders_and_pages_with_back_working(sized_page, web_server):
    page, base = sized_page, web_server
    owner, collection = _owner_with_collection("Wiki")
    paths = [f"ops/runbooks/step-{n:02d}.md" for n in range(55)] + ["ops/oncall.md", "hr/vacation.md"]
    for path in paths:
        add_document(collection, path, f"# {path}\n\nAbout {path}.", user=owner, process=False)
    # Ready without embedding them: this test is about the list, not ingestion.
    Document.objects.filter(collection=collection).update(status=Document.Status.READY)
    Document.objects.filter(source_path="hr/vacation.md").update(status=Document.Status.FAILED, error="Unreadable.")
    sign_in(page, base, "owner")
    url = f"{base}/collections/{collection.pk}/"
    page.goto(url)
    rows = page.locator("#documents tbody tr")
    expect(page.locator("#documents .documents-count")).to_have_text("1–50 of 57 documents")
    expect(page.locator("#documents .folders")).to_contain_text("hr/")
    check_page(page, "documents-list")

    # Typing searches as you go; the address follows, so reload and back work.
    page.get_by_label("Search titles and paths").fill("oncall")
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"q=oncall"))
    page.reload()
    expect(rows).to_have_count(1)
    expect(page.get_by_label("Search titles and paths")).to_have_value("oncall")
    page.get_by_label("Search titles and paths").fill("")
    expect(rows).to_have_count(50)  # everything under the top, a page at a time
    page.get_by_label("Status").select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("hr/vacation.md")
    expect(rows.first).to_contain_text("Unreadable.")
    page.get_by_label("Status").select_option("")
    expect(rows).to_have_count(50)

    # Folders: into ops, then runbooks, a page further, and back up by the breadcrumb.
    page.locator("#documents .folders").get_by_role("link", name="ops/").click()
    expect(page).to_have_url(re.compile(r"folder=ops"))
    page.locator("#documents .folders").get_by_role("link", name="runbooks/").click()
    expect(page.locator("#documents .documents-count")).to_have_text("1–50 of 55 documents in ops/runbooks/")
    check_page(page, "documents-folder")
    page.get_by_role("link", name="Next →").click()
    expect(rows).to_have_count(5)
    expect(page).to_have_url(re.compile(r"page=2"))
    page.go_back()
    expect(page.locator("#documents .documents-count")).to_have_text("1–50 of 55 documents in ops/runbooks/")
    page.locator(".folder-path").get_by_role("link", name="ops").click()
    expect(page.locator("#documents .documents-count")).to_have_text("1–50 of 56 documents in ops/")
    page.locator(".folder-path").get_by_role("link", name="All documents").click()
    expect(page).to_have_url(url)
    expect(page.locator("#documents .documents-count")).to_have_text("1–50 of 57 documents")


def test_an_upload_shows_each_documents_own_state_until_ready(sized_page, web_server, celery_worker_process, tmp_path):
    page, base = sized_page, web_server
    owner, collection = _owner_with_collection("Runbooks")
    sign_in(page, base, "owner")
    page.goto(f"{base}/collections/{collection.pk}/")
    chooser = page.get_by_label("Files to upload")
    accept = chooser.get_attribute("accept")
    assert all(s in accept for s in (".pdf", ".docx", ".html", ".md", ".txt", ".zip")), accept
    files = []
    for n in range(3):
        path = tmp_path / f"runbook-{n}.md"
        path.write_text(f"# Runbook {n}\n\n" + long_document(30))
        files.append(str(path))
    chooser.set_input_files(files)
    page.get_by_role("button", name="Upload", exact=True).click()

    rows = page.locator("#batches .batch-documents li[data-document]")
    expect(rows).to_have_count(3)
    check_page(page, "upload-progress")
    expect(page.locator("#batches .batch-done")).to_have_text("Done.", timeout=240_000)
    expect(page.locator("#batches .batch-counts")).to_have_text("3 of 3 ready")
    expect(page.locator("#batches .batch-percent")).to_have_text("100 %")
    expect(rows.locator(".badge-ready")).to_have_count(3)
    check_page(page, "upload-done")
