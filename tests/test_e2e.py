"""The thin path through every real part: Chromium, uvicorn (ASGI), Celery on Redis,
the embedded Postgres+pgvector, the embedding model and the llama.cpp model server."""

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.services.collections import collection_create, collection_grant
from tests.corpus import BACKUPS, long_document
from tests.helpers import ARTIFACTS, PASSWORD, sign_in, wait_for_answer
from tests.ingestion.builders import make_zip

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


RECORD_SSE = """
window.kbSse = [];
document.addEventListener("htmx:sseMessage", (e) => {
  const live = document.querySelector(".answer.streaming");
  window.kbSse.push({type: e.detail.type, length: live ? live.textContent.length : -1});
});
"""


def test_upload_ingest_ask_stream_and_follow_a_citation(
    page, web_server, celery_worker_process, model_server, tmp_path
):
    User.objects.create_superuser("admin", password=PASSWORD)
    User.objects.create_user("reader", password=PASSWORD)
    User.objects.create_user("outsider", password=PASSWORD)
    base = web_server

    # 1. The admin creates a collection, uploads a Markdown file and grants a viewer.
    sign_in(page, base, "admin")
    page.fill("#id_name", "Operations")
    page.get_by_role("button", name="Create collection").click()
    expect(page.locator("h1")).to_have_text("Operations")
    collection_url = page.url
    source = tmp_path / "backups.md"
    source.write_text(BACKUPS)
    page.set_input_files("input[type=file]", str(source))
    page.get_by_role("button", name="Upload", exact=True).click()
    # 2. The worker parses, chunks, embeds and stores it; the page shows the status until ready.
    expect(page.locator("#documents .badge")).to_have_text("Ready", timeout=120_000)
    from kb.access import system_user
    from kb.models import Collection

    collection_grant(actor=system_user(), collection=Collection.objects.get(name="Operations"),
                     user=User.objects.get(username="reader"), role="viewer")  # fmt: skip

    # 3. A viewer asks; the answer streams in token by token, with numbered citations.
    page.context.clear_cookies()
    sign_in(page, base, "reader")
    # Record every server-sent event the page receives, with the answer's length at that moment.
    page.add_init_script(RECORD_SSE)
    page.goto(collection_url)
    page.fill("textarea[name=question]", "When does the database backup run?")
    page.get_by_role("button", name="Ask", exact=True).click()
    # The conversation page arrives in the ask's own response (no second page load), and
    # its address is pushed so that reload and back work.
    expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)  # loads the model
    wait_for_answer(page.locator("article.message").first, before_retry=lambda: page.evaluate("window.kbSse = []"))
    events = page.evaluate("window.kbSse")
    tokens = [e for e in events if e["type"] == "token"]
    # Growth needs two pieces at least; the demo model's shortest answers come in three.
    assert len(tokens) >= 2, events
    lengths = [e["length"] for e in tokens]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0], "the answer should grow token by token"
    sources = page.locator("article.message ol.sources li")
    expect(sources.first).to_contain_text(re.compile("backup", re.I))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "answer.png"), full_page=True)

    # 4. A follow-up in the same conversation streams a second answer under the first; the
    # search carried the earlier question, so its sources are about backups too.
    page.fill("textarea[name=question]", "How many copies does it keep?")
    page.get_by_role("button", name="Ask a follow-up").click()
    expect(page.locator("article.message")).to_have_count(2)
    second = page.locator("article.message").nth(1)
    expect(second.locator(".question")).to_have_text("How many copies does it keep?")
    wait_for_answer(second)
    expect(second.locator("ol.sources li").first).to_contain_text(re.compile("backup", re.I))
    # The reader rates it; the judgement is stored for admins.
    second.get_by_role("button", name="Helpful", exact=True).click()
    expect(second.locator(".feedback-thanks")).to_contain_text("helpful")
    from kb.models import Feedback

    assert Feedback.objects.get().rating == 1
    page.screenshot(path=str(ARTIFACTS / "follow-up.png"), full_page=True)

    # A citation (in the answer if the model wrote one, else in the sources list) opens its passage.
    cite = page.locator("article.message a.cite")
    link = cite.first if cite.count() else sources.first.locator("a")
    link.click()
    expect(page.locator(".passage-hit")).to_be_visible()
    expect(page.locator(".passage-hit")).to_contain_text(re.compile("backup|restore", re.I))
    page.screenshot(path=str(ARTIFACTS / "citation.png"), full_page=True)
    passage_url = page.url

    # 5. A user without access gets 404 for the collection, its documents and passages.
    page.context.clear_cookies()
    sign_in(page, base, "outsider")
    for url in (collection_url, passage_url):
        response = page.goto(url)
        assert response.status == 404, url
    expect(page.locator("body")).not_to_contain_text("backup")


RECORD_BATCH = """
window.kbBatch = [];
document.addEventListener("htmx:afterSettle", () => {
  const bar = document.querySelector("#batches progress.batch-progress");
  const eta = document.querySelector("#batches .batch-eta");
  if (bar) window.kbBatch.push({value: Number(bar.value), eta: eta ? eta.textContent.trim() : ""});
});
"""

DROP_FILES = """
([files]) => {
  const transfer = new DataTransfer();
  for (const [name, text, base64] of files) {
    // Binary files (a ZIP) come base64-encoded, text files as they are.
    const body = base64 ? Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)) : text;
    transfer.items.add(new File([body], name, {type: base64 ? "application/zip" : "text/markdown"}));
  }
  const zone = document.querySelector("[data-dropzone]");
  zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
  return document.querySelector("[data-dropzone] input[type=file]").files.length;
}
"""


def test_dropped_files_upload_as_one_batch_with_live_progress_to_ready(
    page, web_server, celery_worker_process, tmp_path
):

    admin = User.objects.create_superuser("admin", password=PASSWORD)
    collection = collection_create(user=admin, name="Runbooks")
    sign_in(page, web_server, "admin")
    page.add_init_script(RECORD_BATCH)
    page.goto(f"{web_server}/collections/{collection.pk}/")

    # Long enough that embedding outlasts a few of the page's 1 s polls even in bf16 on AMX
    # (at 12 sections all three files were done between two polls there).
    files = [[f"runbook-{n}.md", f"# Runbook {n}\n\n" + long_document(40)] for n in range(3)]
    assert page.evaluate(DROP_FILES, [files]) == 3
    expect(page.locator("[data-dropzone-count]")).to_have_text("3 file(s) chosen")
    page.get_by_role("button", name="Upload", exact=True).click()

    counts = page.locator("#batches .batch-counts")
    expect(counts).to_contain_text("of 3 ready")
    expect(page.locator("#batches .batch-done")).to_have_text("Done.", timeout=240_000)
    expect(counts).to_have_text("3 of 3 ready")
    expect(page.locator("#batches")).not_to_have_attribute("hx-trigger", re.compile("."))  # polling stopped
    expect(page.locator("#documents .badge-ready")).to_have_count(3, timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch.png"), full_page=True)

    seen = page.evaluate("window.kbBatch")
    partial = [s for s in seen if 0 < s["value"] < 100]
    assert partial, f"the progress bar should move through intermediate values: {seen}"
    assert any(s["eta"].endswith("left") for s in seen), seen
    values = [s["value"] for s in seen]
    assert values == sorted(values), "progress never goes backwards"


def test_a_dropped_wiki_export_is_embedded_in_one_grouped_task_with_live_progress(
    page, web_server, celery_worker_process
):
    import base64

    from kb.models import Document

    admin = User.objects.create_superuser("admin", password=PASSWORD)
    collection = collection_create(user=admin, name="Wiki")
    sign_in(page, web_server, "admin")
    page.add_init_script(RECORD_BATCH)
    page.goto(f"{web_server}/collections/{collection.pk}/")
    # Long pages: the one shared embedding pass must outlast a few of the page's polls.
    pages = {f"ops/runbook-{n}.md": f"# Runbook {n}\n\n" + long_document(40) for n in range(4)}
    archive = base64.b64encode(make_zip(pages).getvalue()).decode()

    assert page.evaluate(DROP_FILES, [[["wiki.zip", "", archive]]]) == 1
    page.get_by_role("button", name="Upload", exact=True).click()

    expect(page.locator("#batches .batch-done")).to_have_text("Done.", timeout=240_000)
    expect(page.locator("#batches .batch-counts")).to_have_text("4 of 4 ready")
    expect(page.locator("#batches")).to_contain_text("4 new")
    expect(page.locator("#documents .badge-ready")).to_have_count(4, timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "wiki-export.png"), full_page=True)
    seen = [s["value"] for s in page.evaluate("window.kbBatch")]
    assert any(0 < v < 100 for v in seen), f"the bar should move while the shared pass embeds: {seen}"
    assert seen == sorted(seen), "progress never goes backwards"
    assert set(Document.objects.values_list("source_path", flat=True)) == set(pages)
    worker_log = (ARTIFACTS / "worker.log").read_text()
    assert worker_log.count("Task ingestion.tasks.ingest_documents[") >= 2  # received, then succeeded
    assert "Task ingestion.tasks.ingest_document[" not in worker_log  # no page went alone
