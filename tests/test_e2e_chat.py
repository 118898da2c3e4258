"""Asking in Chromium at 1280 and 390 px (issue 15): Enter sends, the states while an answer is
on its way (searching, found N passages, writing with the seconds), Stop against a frozen model
server, copy buttons, what a screen reader is told, rename, search and delete, and the model
server offline with the passages still listed."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb import llm
from kb.access import system_user
from kb.models import Message
from kb.services.collections import collection_create, collection_grant
from tests.corpus import BACKUPS
from tests.factories import add_document
from tests.helpers import PASSWORD, free_port, kb_web_server, sign_in, wait_for_answer
from tests.standins import Behaviour, failing_model_server
from tests.ui import check_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Everything the page tells screen readers (chat.js's live region), and every stream event.
RECORD = """
window.kbSaid = [];
window.kbSse = [];
new MutationObserver(() => {
  const region = document.getElementById("chat-live");
  const text = region ? region.textContent.trim() : "";
  if (text && text !== window.kbSaid[window.kbSaid.length - 1]) window.kbSaid.push(text);
}).observe(document, {childList: true, subtree: true, characterData: true});
document.addEventListener("htmx:sseMessage", (e) => window.kbSse.push(e.detail.type));
"""


def _reader_with_backups():
    user = User.objects.create_user("reader", password=PASSWORD)
    collection = collection_create(user=system_user(), name="Operations")
    collection_grant(actor=system_user(), collection=collection, user=user, role="viewer")
    add_document(collection, "ops/backups.md", BACKUPS)
    return user, collection


def _said(page, text: str) -> list[str]:
    """What the page has told screen readers, once it has said `text`."""
    page.wait_for_function("(text) => window.kbSaid.some((s) => s.includes(text))", arg=text, timeout=5_000)
    return page.evaluate("window.kbSaid")


def _not_covered_by_the_ask_box(page, locator) -> bool:
    """Whether the element's centre, as scrolled now, is the element itself and not the sticky ask box."""
    return locator.evaluate(
        """(el) => {
          const r = el.getBoundingClientRect();
          if (r.bottom > window.innerHeight || r.top < 0) return false;
          const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
          return !!hit && (el === hit || el.contains(hit)) && !hit.closest("form.ask");
        }"""
    )


def test_asking_with_the_real_model_then_copy_follow_up_rename_search_and_delete(sized_page, web_server, model_server):
    page, base = sized_page, web_server
    _reader_with_backups()
    page.add_init_script(RECORD)
    sign_in(page, base, "reader")
    check_page(page, "chat-home")

    # New conversation: the question box, ready to type in.
    page.get_by_role("link", name="New conversation").click()
    box = page.locator("#ask textarea[name=question]")
    expect(box).to_be_focused()
    # Shift+Enter adds a line; Enter sends.
    box.type("When does the database backup run?")
    box.press("Shift+Enter")
    expect(box).to_have_value("When does the database backup run?\n")
    expect(page).to_have_url(re.compile(r"/(#ask)?$"))
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
    first = page.locator("article.message").first
    again = wait_for_answer(first)
    expect(first.locator("ol.sources li").first).to_contain_text(re.compile("backup", re.I))
    events = page.evaluate("window.kbSse")
    assert "state" in events and "token" in events and events.index("state") < events.index("token"), events
    said = _said(page, "Answer finished.")
    assert re.match(r"Searching… .*Found \d+ passages?\. .*Writing… .*Answer finished\.", " ".join(said)), said
    finished = [s for s in said if "Answer finished." in s]
    assert len(finished) == 1 + again and len(said) <= 5 + 3 * again, f"each answer is read once, not by tokens: {said}"
    expect(page.locator("h1")).to_have_text("When does the database backup run?")
    check_page(page, "chat-answer")

    # Copy the answer.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    copy = first.locator("button[data-copy]")
    expect(copy).to_have_text("Copy answer")
    copy.click()
    expect(copy).to_have_text("Copied")
    answer_text = first.locator(".answer").inner_text().strip()
    assert page.evaluate("navigator.clipboard.readText()") == answer_text
    assert "Copied" in _said(page, "Copied")

    # An empty question is refused; the message goes as soon as there is a question.
    box = page.locator("#ask textarea[name=question]")
    box.fill("   ")
    box.press("Enter")
    expect(page.locator("#ask-error")).to_have_text("This field is required.")
    box.fill("")
    box.type("How many copies does it keep?")
    expect(page.locator("#ask-error")).to_have_text("")
    box.press("Enter")
    expect(page.locator("article.message")).to_have_count(2)
    last = page.locator("article.message").nth(1)
    wait_for_answer(last)
    expect(page.locator("#ask-error")).to_have_text("")

    # The sticky ask box covers neither the last answer's passages nor its buttons.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    assert _not_covered_by_the_ask_box(page, last.locator("ol.sources li").last)
    regenerate = last.get_by_role("button", name="Regenerate")
    regenerate.focus()  # tabbing to it scrolls it clear of the box too
    assert _not_covered_by_the_ask_box(page, regenerate)
    first.get_by_role("button", name="Regenerate").focus()
    assert _not_covered_by_the_ask_box(page, first.get_by_role("button", name="Regenerate"))
    check_page(page, "chat-follow-up")

    # Rename, inline: the heading, the sidebar and the tab's title follow.
    conversation_url = page.url
    page.locator(".conversation-tools summary", has_text="Rename").click()
    page.get_by_label("New title").fill("Backup questions")
    page.get_by_role("button", name="Save title").click()
    expect(page.locator("h1")).to_have_text("Backup questions")
    expect(page.locator("#conversation-list a[aria-current=page]")).to_have_text("Backup questions")
    expect(page).to_have_title("Backup questions · kb")

    # Search the sidebar by a follow-up's words, then by words nowhere.
    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("copies")
    expect(page.locator("#conversation-list li")).to_have_count(1)
    expect(page.locator("#conversation-list")).to_contain_text("Backup questions")
    search.fill("zebra crossing")
    expect(page.locator("#conversation-list")).to_have_text(re.compile("No conversation mentions “zebra crossing”"))
    check_page(page, "chat-search")

    # Delete, after confirming: gone from the sidebar, and its page is gone.
    page.locator(".conversation-tools summary", has_text="Delete").click()
    expect(page.get_by_text("This cannot be undone.")).to_be_visible()
    page.get_by_role("button", name="Delete conversation").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator(".flash")).to_contain_text("Conversation deleted.")
    expect(page.locator("#conversation-list")).not_to_contain_text("Backup questions")
    check_page(page, "chat-deleted")
    assert page.goto(conversation_url).status == 404


def test_a_frozen_model_server_shows_found_then_writing_with_seconds_and_stop_ends_it(sized_page, settings):
    page = sized_page
    _, collection = _reader_with_backups()
    # Nothing for a minute: the answer's states must show, not an empty box.
    with failing_model_server(Behaviour(delay_before=60)) as (url, _):
        settings.KB_LLM_URL = url
        with kb_web_server() as base:
            page.add_init_script(RECORD)
            sign_in(page, base, "reader")
            page.goto(f"{base}/collections/{collection.pk}/")
            check_page(page, "chat-collection")
            box = page.get_by_label("Ask a question about Operations")
            box.fill("When does the database backup run?")
            box.press("Enter")
            expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
            message = page.locator("article.message").first
            state = message.locator("[data-answer-state]")
            expect(state.locator(".found")).to_have_text(re.compile(r"Found \d+ passages?\."))
            expect(state.locator(".state")).to_have_text("Writing…")
            expect(message.locator("ol.sources li").first).to_contain_text(re.compile("backup", re.I))
            expect(state.locator(".elapsed")).to_have_text(re.compile(r"^[2-9] s$"), timeout=10_000)
            stop = message.get_by_role("button", name="Stop")
            expect(stop).to_be_visible()
            check_page(page, "chat-writing")
            stop.click()
            expect(message.locator("p.error:not(.message-error)")).to_contain_text(
                "Stopped at your request.", timeout=5_000
            )
            said = _said(page, "Answer finished.")
            assert "Writing…" in " ".join(said) and any("Answer finished." in s for s in said), said
            check_page(page, "chat-stopped")


def test_model_server_offline_still_lists_the_passages_and_code_can_be_copied(sized_page, settings):
    page = sized_page
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _reader_with_backups()
    with kb_web_server() as base:
        sign_in(page, base, "reader")
        box = page.locator("#ask textarea[name=question]")
        box.fill("When does the database backup run?")
        box.press("Enter")
        message = page.locator("article.message").first
        expect(message.locator("p.error:not(.message-error)")).to_have_text(llm.OFFLINE, timeout=60_000)
        expect(message.locator("ol.sources li").first).to_contain_text(re.compile("backup", re.I))
        body = page.locator("body").inner_text()
        assert "127.0.0.1" not in body and "make llm" not in body and "http://" not in body
        check_page(page, "chat-offline")

        # An answer with a code block: each block has its own copy button.
        stored = Message.objects.get()
        Message.objects.filter(pk=stored.pk).update(
            status=Message.Status.COMPLETE, error="", sentences=[],
            answer="Run the backup by hand [1]:\n\n```\nmake backup DATE=today\n```\n",
        )  # fmt: skip
        page.reload()
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        copy = page.locator(".code-block button.copy-code")
        expect(copy).to_have_text("Copy code")
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == "make backup DATE=today"
        check_page(page, "chat-code")


def test_a_refused_follow_up_keeps_what_was_typed(page, settings):
    """A question the server refuses (422, here one past the 2,000-character limit that the box's
    maxlength would normally stop) is answered with the reason, and the text stays in the box."""
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"  # nothing is answered: the ask is refused first
    _reader_with_backups()
    with kb_web_server() as base:
        sign_in(page, base, "reader")
        box = page.locator("#ask textarea[name=question]")
        box.fill("When does the database backup run?")
        box.press("Enter")
        expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
        follow_up = page.locator("#ask textarea[name=question]")
        page.evaluate("document.querySelector('#ask textarea[name=question]').removeAttribute('maxlength')")
        long_question = "Why? " * 401  # 2,005 characters
        follow_up.fill(long_question)
        follow_up.press("Enter")
        expect(page.locator("#ask-error")).to_contain_text("limited to 2,000 characters")
        assert follow_up.input_value() == long_question
