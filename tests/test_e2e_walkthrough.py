"""Issue 15's walk-through, once at 1280 px and once at 390 px, with every real part: a new
team's first visit to the admin's feedback view. Every page it stops on is screenshotted to
tests/artifacts/walk-<page>-<width>.png and must fit the screen and pass axe-core (tests/ui.py).

The steps: sign-in → an empty first visit → a collection → several files uploaded with live,
per-document progress → a question sent with Enter, its states (searching, found N passages,
writing) announced, and stopped → a follow-up answered → a citation opened → the conversation
renamed and deleted → a document deleted after its confirmation, then restored → a person
invited and granted the collection → the model server offline banner, with the passages still
shown → the answer's rating in the admin's feedback view."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.models import Document, Feedback
from tests.corpus import BACKUPS
from tests.helpers import PASSWORD, free_port, kb_web_server, sign_in, wait_for_answer
from tests.ui import check_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# What the chat's screen-reader region says, in order: the states must be announced, once each.
RECORD_ANNOUNCEMENTS = """
window.kbSaid = [];
new MutationObserver(() => {
  const region = document.getElementById("chat-live");
  const text = region ? region.textContent.trim() : "";
  if (text && window.kbSaid[window.kbSaid.length - 1] !== text) window.kbSaid.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

ONBOARDING = """# Onboarding

## Accounts
New starters get their laptop on the first day and an account for the wiki within two hours.

## VPN
To request access to the VPN, open a ticket in the service desk under "Network access".
The VPN client is installed on every company laptop.
"""

HOLIDAYS = """<html><head><title>Holidays</title></head><body>
<h1>Holidays</h1>
<p>Every employee has twenty-eight days of paid holiday a year, including public holidays.</p>
<h2>Booking</h2>
<p>Book holidays in the HR portal at least two weeks ahead.</p>
</body></html>"""


def check_dark_too(page, name: str) -> None:
    """The same page in the dark theme (the system setting): it must pass the same checks."""
    page.emulate_media(color_scheme="dark")
    try:
        check_page(page, f"{name}-dark")
    finally:
        page.emulate_media(color_scheme="light")


def open_nav(page, name: str) -> None:
    """A link of the main navigation, which the phone layout folds into a Menu."""
    menu = page.locator("details.menu > summary")
    if menu.count() and menu.is_visible():
        menu.click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def test_a_team_walks_through_kb(sized_page, web_server, celery_worker_process, model_server, tmp_path):
    page, base = sized_page, web_server
    page.add_init_script(RECORD_ANNOUNCEMENTS)
    User.objects.create_superuser("admin", password=PASSWORD)

    # 1. Sign-in.
    page.goto(f"{base}/login/")
    check_page(page, "walk-sign-in")
    sign_in(page, base, "admin")

    # 2. The first visit: no collection yet, so the next steps instead of an empty page.
    expect(page.get_by_role("heading", name="Get started in three steps")).to_be_visible()
    check_page(page, "walk-first-visit")

    # 3. A collection.
    page.fill("#id_name", "Handbook")
    page.get_by_role("button", name="Create collection").click()
    expect(page.locator("h1")).to_have_text("Handbook")
    collection_url = page.url
    check_page(page, "walk-collection-empty")

    # 4. Several files at once; each document shows its own state until all are ready.
    files = {"backups.md": BACKUPS, "onboarding.md": ONBOARDING, "holidays.html": HOLIDAYS}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    page.set_input_files("input[type=file]", [str(tmp_path / name) for name in files])
    page.get_by_role("button", name="Upload", exact=True).click()
    rows = page.locator("#batches .batch-documents li")
    expect(page.locator("#batches")).to_be_visible()
    check_page(page, "walk-upload-progress")
    ready = page.locator("#documents .badge", has_text="Ready")
    expect(ready).to_have_count(3, timeout=180_000)
    expect(rows).to_have_count(3)  # one row each, with its own state
    expect(rows.locator(".badge", has_text="Ready")).to_have_count(3)
    expect(page.locator("#batches .batch-counts")).to_contain_text("3 of 3 ready")
    check_page(page, "walk-collection")
    check_dark_too(page, "walk-collection")

    # 5. A question sent with Enter; Shift+Enter only adds a line. Its states, then Stop.
    box = page.get_by_label("Ask a question about Handbook")
    box.fill("How do I request access to the VPN?")
    box.press("Shift+Enter")
    expect(box).to_have_value("How do I request access to the VPN?\n")
    box.press_sequentially("Explain every step in detail.")
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
    conversation_url = page.url
    first = page.locator("article.message").first
    expect(first.locator("[data-stop-answer]")).to_be_visible()
    expect(first.locator("[data-answer-state]")).to_contain_text(re.compile(r"Found \d+ passages?"), timeout=60_000)
    expect(first.locator("ol.sources li").first).to_be_visible()  # listed before the model writes
    check_page(page, "walk-answering")
    first.locator("[data-stop-answer]").click()
    expect(first).to_contain_text("Stopped at your request.", timeout=30_000)

    # 6. A follow-up, answered to the end.
    follow_up = page.get_by_label("Ask a follow-up question")
    follow_up.fill("When does the database backup run?")
    follow_up.press("Enter")
    expect(page.locator("article.message")).to_have_count(2, timeout=30_000)
    second = page.locator("article.message").nth(1)
    wait_for_answer(second)
    expect(second.locator("ol.sources")).to_contain_text(re.compile("backup", re.I))
    said = " | ".join(page.evaluate("window.kbSaid"))
    assert re.search(r"Searching.*Found \d+ passages?.*Writing", said), said
    assert "Answer finished" in said or "answer" in said.lower(), said
    check_page(page, "walk-conversation")
    check_dark_too(page, "walk-conversation")
    second.get_by_role("button", name="Helpful", exact=True).click()
    expect(second.locator(".feedback-thanks")).to_be_visible()

    # 7. A citation opens its passage, highlighted.
    second.locator("ol.sources li a").first.click()
    expect(page.locator(".passage-hit")).to_be_visible()
    check_page(page, "walk-passage")

    # 8. The conversation renamed, then deleted.
    page.goto(conversation_url)
    page.locator("summary", has_text="Rename").click()
    page.get_by_label("New title").fill("Backups and first days")
    page.get_by_role("button", name="Save title").click()
    expect(page.locator("h1")).to_have_text("Backups and first days")
    expect(page.locator("#conversation-list")).to_contain_text("Backups and first days")
    check_page(page, "walk-renamed")
    page.locator("summary", has_text="Delete").click()
    page.get_by_role("button", name="Delete conversation").click()
    expect(page).not_to_have_url(conversation_url)
    expect(page.locator("#conversation-list")).not_to_contain_text("Backups and first days")
    assert page.request.get(conversation_url).status == 404

    # 9. A document deleted after its confirmation, then restored with Undo.
    page.goto(collection_url)
    page.locator("#documents").get_by_role("link", name="Holidays").click()
    page.get_by_role("link", name="Delete…").click()
    expect(page.locator("h1")).to_have_text("Delete “Holidays”?")
    check_page(page, "walk-document-delete")
    page.get_by_role("button", name="Delete document").click()
    expect(page.locator(".undo-flash")).to_contain_text("Deleted holidays.html")
    expect(page.locator("#documents")).not_to_contain_text("Holidays")
    holidays = Document.objects.get(title="Holidays")
    assert holidays.chunks.count() == 0, "a deleted document's passages leave the search at once"
    check_page(page, "walk-document-deleted")
    page.locator(".undo-flash").get_by_role("button", name="Undo").click()
    expect(page.locator("#documents")).to_contain_text("Holidays")

    # 10. A person invited, then granted the collection with their name suggested.
    open_nav(page, "People")
    page.get_by_role("link", name="Invite a person").click()
    page.get_by_label("Username").fill("nora")
    page.get_by_label("E-mail").fill("nora@example.org")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("h1")).to_have_text("Invited nora")
    check_page(page, "walk-invited")
    page.goto(collection_url)
    page.get_by_role("link", name="Access and settings").click()
    name_box = page.get_by_role("combobox", name="User or group name")
    name_box.press_sequentially("no", delay=50)
    expect(page.locator("#principal-options option[value=nora]")).to_have_count(1)
    name_box.fill("nora")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("table.grants")).to_contain_text("nora")
    check_page(page, "walk-access")

    # 11. The model server offline: a banner on every page, and the passages still found.
    # (Cookies ignore the port, so the same session signs in to this second web server.)
    with kb_web_server({"KB_LLM_URL": f"http://127.0.0.1:{free_port()}"}) as offline:
        page.goto(collection_url.replace(base, offline))
        banner = page.locator(".model-offline")
        expect(banner).to_contain_text("The model server is offline", timeout=15_000)
        box = page.get_by_label("Ask a question about Handbook")
        box.fill("How many days of holiday do employees have?")
        box.press("Enter")
        expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
        answer = page.locator("article.message").first
        expect(answer).to_contain_text("The model server is offline", timeout=60_000)
        expect(answer.locator("ol.sources li").first).to_be_visible()
        check_page(page, "walk-offline")
        check_dark_too(page, "walk-offline")

    # 12. The admin's feedback view lists the rating given in step 6.
    page.goto(f"{base}/admin/kb/feedback/")
    expect(page.locator("#result_list")).to_contain_text("When does the database backup run?")
    assert Feedback.objects.filter(rating=1).count() == 1
    check_page(page, "walk-admin-feedback")
