"""The page shell in Chromium at 1280 and 390 px (issue 15): the first visit, the menu on a
phone, skip links, the account pages, friendly errors for pages and for htmx requests, and
every page passing axe-core in the light and the dark theme without scrolling sideways."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.access import system_user
from kb.models import Collection, Conversation
from kb.services.sources import source_add, source_sync
from tests.helpers import PASSWORD, sign_in
from tests.ui import check_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OFFLINE = "Couldn't reach kb. Check your connection and try again."
LONG_TITLE = "How do I restore the nightly backup of the payroll database onto the staging server " + "x" * 90


def check_both_themes(page, name: str) -> None:
    """check_page in the light theme, then again with the system set to dark."""
    check_page(page, name)
    page.emulate_media(color_scheme="dark")
    try:
        check_page(page, f"{name}-dark")
    finally:
        page.emulate_media(color_scheme="light")


def phone(page) -> bool:
    return page.viewport_size["width"] < 600


def test_a_staff_members_first_visit_menu_skip_links_and_account_pages(sized_page, web_server):
    page, base = sized_page, web_server
    admin = User.objects.create_user("admin", password=PASSWORD, is_staff=True)

    page.goto(f"{base}/login/")
    check_both_themes(page, "shell-login")
    sign_in(page, base, "admin")

    # The first visit says what to do next, with the form for the first step on the page.
    expect(page.get_by_role("heading", name="Get started in three steps")).to_be_visible()
    expect(page.locator(".next-steps > li")).to_have_count(3)
    expect(page.locator(".example-question")).to_be_visible()
    check_both_themes(page, "shell-first-visit")

    # The first Tab reaches the skip link, which moves the focus to the page's content.
    page.keyboard.press("Tab")
    skip = page.locator(":focus")
    expect(skip).to_have_text("Skip to content")
    box = skip.bounding_box()
    assert box and box["y"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"

    # On a phone the links fold into a menu button; on a laptop they show in the bar.
    account = page.locator(".topbar nav").get_by_role("link", name="Account")
    menu = page.locator(".topbar .menu > summary")
    expect(page.locator(".topbar .who")).to_have_text("admin")
    if phone(page):
        expect(account).to_be_hidden()
        menu.click()
        expect(account).to_be_visible()
        expect(page.locator(".topbar nav").get_by_role("link", name="Audit log")).to_be_visible()
        check_page(page, "shell-menu-open")
        page.keyboard.press("Escape")
        expect(account).to_be_hidden()
        assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    else:
        expect(menu).to_be_hidden()
        expect(account).to_be_visible()
        box = page.locator(".topbar").bounding_box()
        assert box["height"] < 60, "the top bar stays one line"

    # Creating the first collection; back home, the ask box gets its own skip link.
    page.fill("#id_name", "Runbooks")
    page.get_by_role("button", name="Create collection").click()
    expect(page.locator("h1")).to_have_text("Runbooks")
    Conversation.objects.create(user=admin, title=LONG_TITLE)
    for n in range(3):
        Conversation.objects.create(user=admin, title=f"Where is runbook {n}?")
    page.goto(f"{base}/")
    expect(page.locator(".sidebar")).to_contain_text("How do I restore")
    check_both_themes(page, "shell-home")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to the question box")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "id_question"

    # The account page, a token made there, the password form, the audit log.
    page.goto(f"{base}/account/tokens/")
    page.fill("#id_name", "laptop")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_be_visible()
    check_both_themes(page, "shell-account")
    page.goto(f"{base}/account/password/")
    check_both_themes(page, "shell-password")
    page.goto(f"{base}/audit/")
    expect(page.locator("table.audit")).to_contain_text("admin")
    check_both_themes(page, "shell-audit")

    # A page that does not exist: a friendly 404 with the way back.
    response = page.goto(f"{base}/no/such/page/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    check_both_themes(page, "shell-404")


def test_a_failed_htmx_request_is_said_plainly_in_a_live_region(sized_page, web_server):
    page, base = sized_page, web_server
    User.objects.create_user("alice", password=PASSWORD)
    sign_in(page, base, "alice")
    page.goto(f"{base}/account/tokens/")
    alerts = page.locator("#kb-alerts")
    assert alerts.get_attribute("aria-live") == "polite"

    # The network is gone: kb says so, and no address or detail of the server.
    page.route(
        "**/account/tokens/", lambda route: route.abort() if route.request.method == "POST" else route.continue_()
    )
    page.fill("#id_name", "laptop")
    page.get_by_role("button", name="Create token").click()
    expect(alerts).to_have_text(OFFLINE + "Dismiss")
    check_page(page, "shell-htmx-offline")
    page.unroute("**/account/tokens/")

    # The server fails: a different message, still nothing internal.
    page.route(
        "**/account/tokens/",
        lambda route: route.fulfill(status=500, body="Traceback (most recent call last) at http://10.0.0.5:8000/"),
    )
    page.get_by_role("button", name="Create token").click()
    expect(alerts).to_contain_text("Something went wrong in kb")
    text = alerts.inner_text()
    assert "Traceback" not in text and "http" not in text and "10.0.0.5" not in text
    page.unroute("**/account/tokens/")

    # Dismiss clears it; a request that succeeds clears it too.
    alerts.get_by_role("button", name="Dismiss").click()
    expect(alerts).to_be_empty()
    page.route("**/account/tokens/", lambda route: route.abort())
    page.get_by_role("button", name="Create token").click()
    expect(alerts).to_contain_text(OFFLINE)
    page.unroute("**/account/tokens/")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_be_visible()
    expect(alerts).to_be_empty()

    # A refused name comes back in place (422), not as a page-wide failure.
    page.fill("#id_name", "")
    page.locator("#id_name").evaluate("el => el.removeAttribute('required')")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#tokens .error")).to_contain_text("This field is required.")
    expect(alerts).to_be_empty()


WIDE_ANSWER = (
    '<article class="message"><h2 class="question">How is the backup configured?</h2>'
    '<div class="answer"><p>Use this:</p><pre><code>restic -r s3:https://backup.example.org/very/long/repository/'
    "path/that/does/not/wrap backup /var/lib/postgresql --exclude-caches --one-file-system</code></pre>"
    "<table><thead><tr><th>Setting</th><th>Default value</th><th>Where it is set</th><th>What it changes</th>"
    "<th>Since</th></tr></thead><tbody><tr><td>KB_BACKUP_RETENTION_DAYS_FOR_THE_NIGHTLY_SNAPSHOTS</td>"
    "<td>fourteen</td><td>the environment of the worker</td><td>how long snapshots stay</td><td>1.2</td></tr>"
    "</tbody></table><p>A long unbroken identifier: "
    "ingestion.tasks.recover_stale_documents_after_the_worker_was_lost_and_came_back</p></div></article>"
)


def test_answers_code_and_tables_scroll_inside_themselves_not_the_page(sized_page, web_server):
    page, base = sized_page, web_server
    User.objects.create_user("reader", password=PASSWORD)
    sign_in(page, base, "reader")
    # The answer's markup as kb renders it (Markdown: pre/code, a table), put on a page.
    page.locator("#content").evaluate("(main, html) => main.insertAdjacentHTML('beforeend', html)", WIDE_ANSWER)
    page.evaluate("window.dispatchEvent(new Event('resize'))")
    check_page(page, "shell-wide-answer")
    if phone(page):
        for selector in (".answer pre", ".answer table"):
            scroller = page.locator(selector)
            assert scroller.evaluate("el => el.scrollWidth > el.clientWidth"), f"{selector} scrolls inside itself"
            assert scroller.get_attribute("tabindex") == "0", f"{selector} can be scrolled from the keyboard"


def test_someone_who_can_read_nothing_is_told_who_can_give_access(sized_page, web_server):
    page, base = sized_page, web_server
    User.objects.create_user("newcomer", password=PASSWORD)
    sign_in(page, base, "newcomer")
    expect(page.get_by_role("heading", name="You can't read any collection yet")).to_be_visible()
    expect(page.locator(".no-access")).to_contain_text("newcomer")
    expect(page.get_by_role("button", name="Create collection")).to_have_count(0)
    check_both_themes(page, "shell-no-access")


def test_the_source_pages_fit_a_phone_and_pass_axe(sized_page, web_server, tmp_path, settings):
    page, base = sized_page, web_server
    root = tmp_path / "shares" / "runbooks-with-a-rather-long-folder-name-that-does-not-break"
    root.mkdir(parents=True)
    (root / "restore.md").write_text("# Restore\n\nRestore from the newest snapshot.\n")
    settings.KB_SOURCE_ROOTS = [str(tmp_path / "shares")]
    User.objects.create_user("editor", password=PASSWORD, is_staff=True)
    sign_in(page, base, "editor")
    page.fill("#id_name", "Ops")
    page.get_by_role("button", name="Create collection").click()
    expect(page.locator("h1")).to_have_text("Ops")
    collection = Collection.objects.get(name="Ops")
    page.goto(f"{base}/collections/{collection.pk}/sources/new/")
    check_both_themes(page, "shell-source-form")
    source = source_add(user=system_user(), collection=collection, kind="folder", location=str(root), sync=False)
    source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    page.goto(f"{base}/sources/{source.pk}/")
    expect(page.locator("table.runs")).to_be_visible()
    check_both_themes(page, "shell-source-detail")
