"""In the browser: the quoted answer appears before the model writes, then the model's answer
arrives checked sentence by sentence, with the sentence no source supports marked.

The model server is the fault stand-in, paced like a model: no real model can be made to
invent an identifier on demand, which is the case shown here."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.access import system_user
from kb.services.collections import collection_create, collection_grant
from tests.corpus import BACKUPS
from tests.factories import add_document
from tests.helpers import ARTIFACTS, PASSWORD, kb_web_server, sign_in
from tests.standins import Behaviour, failing_model_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

INVENTED = ["The backup ", "runs ", "nightly ", "at ", "02:00 ", "[2]. ", "To restore, ", "call ",
            "`logging.rotate()` ", "first ", "[1]. ", "It keeps ", "fourteen ", "copies."]  # fmt: skip


def test_the_quoted_answer_comes_first_then_the_checked_answer_with_the_invented_sentence_marked(
    page, settings
):
    User.objects.create_user("reader", password=PASSWORD)
    collection = collection_create(user=system_user(), name="Operations")
    collection_grant(actor=system_user(), collection=collection, user=User.objects.get(username="reader"),
                     role="viewer")  # fmt: skip
    add_document(collection, "ops/backups.md", BACKUPS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with failing_model_server(Behaviour(tokens=INVENTED, delay_before=1.5, delay_between=0.25)) as (url, _):
        settings.KB_LLM_URL = url
        with kb_web_server() as base:
            sign_in(page, base, "reader")
            page.goto(f"{base}/collections/{collection.pk}/")
            page.fill("textarea[name=question]", "When does the database backup run?")
            page.get_by_role("button", name="Ask", exact=True).click()

            message = page.locator("article.message").first
            quote = message.locator(".extractive .quote")
            # Before the model's first word: the quoted sentence, with its citation.
            expect(quote).to_contain_text("The database backup runs nightly at 02:00", timeout=60_000)
            expect(quote.locator("a.cite")).to_have_text("[1]")
            assert message.locator(".answer.streaming .draft").inner_text() == ""
            page.screenshot(path=str(ARTIFACTS / "checked-1-quoted-first.png"), full_page=True)

            # While the model writes: sentences appear checked, the unsupported one marked.
            checked = message.locator(".answer.streaming .checked")
            expect(checked.locator("mark.unsupported")).to_contain_text("logging.rotate()", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "checked-2-while-streaming.png"), full_page=True)

            # The finished answer: the wrong [2] became [1], the invented sentence is marked and
            # not cited, and a line says how many statements were not found.
            final = message.locator(".answer:not(.streaming)")
            expect(final).to_be_visible(timeout=30_000)
            expect(final.locator("mark.unsupported")).to_have_text("To restore, call logging.rotate() first.")
            expect(final.locator("a.cite")).to_have_text(["[1]", "[1]"])
            expect(message.locator(".verification")).to_have_text(
                "1 of 3 statements was not found in the sources: marked, and not cited."
            )
            expect(quote).to_contain_text("The database backup runs nightly at 02:00")
            page.screenshot(path=str(ARTIFACTS / "checked-3-final.png"), full_page=True)
