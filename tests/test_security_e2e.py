"""In real Chromium against uvicorn: an owner grants access in the browser, the grantee signs in,
asks, and sees only the granted collection; hostile text never runs; tokens are shown once."""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.models import ApiToken, Role
from kb.services.collections import collection_create, collection_grant
from tests.corpus import BACKUPS, EXFILTRATION, HOSTILE, INJECTED
from tests.factories import add_document
from tests.helpers import PASSWORD, kb_web_server, sign_in
from tests.standins import InjectionObeyingModelStandin

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_grant_in_the_browser_then_the_grantee_asks_and_sees_only_that_collection(page, web_server, model_server):
    admin = User.objects.create_superuser("admin", password=PASSWORD)
    User.objects.create_user("reader", password=PASSWORD)
    handbook = collection_create(user=admin, name="Handbook")
    finance = collection_create(user=admin, name="Finance")
    add_document(handbook, "backups.md", BACKUPS)
    add_document(handbook, "release.md", HOSTILE)
    add_document(finance, "budget.md", "# Budget\n\nThe database backup budget is 40,000 euros, kept secret.\n")
    base = web_server
    dialogs, csp_errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

    # The owner grants the reader a viewer role on Handbook through the access page (htmx).
    sign_in(page, base, "admin")
    page.goto(f"{base}/collections/{handbook.pk}/access/")
    page.fill("#id_principal", "reader")
    page.select_option("#id_kind", "user")
    page.select_option("#id_role", "viewer")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#access table.grants")).to_contain_text("reader")
    expect(page.locator("#access table.who-has-access")).to_contain_text("direct grant: viewer")

    # The reader sees Handbook only, asks, and every source is from Handbook.
    page.context.clear_cookies()
    sign_in(page, base, "reader")
    expect(page.locator("ul.cards")).to_contain_text("Handbook")
    expect(page.locator("ul.cards")).not_to_contain_text("Finance")
    page.goto(f"{base}/collections/{handbook.pk}/")
    page.fill("textarea[name=question]", "What is the database backup budget?")
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(page.locator("article.message .answer:not(.streaming)")).to_be_visible(timeout=120_000)
    body = page.locator("body").inner_text()
    assert "40,000" not in body and "Finance" not in body
    for href in page.locator("article.message ol.sources a").evaluate_all("els => els.map(e => e.href)"):
        response = page.request.get(href)
        assert response.status == 200 and "budget.md" not in response.text()
    assert page.goto(f"{base}/collections/{finance.pk}/").status == 404

    # Hostile document text is shown, never run, live or in the citation viewer.
    page.goto(f"{base}/collections/{handbook.pk}/")
    page.fill("textarea[name=question]", "When do the release notes ship?")
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(page.locator("article.message .answer:not(.streaming)")).to_be_visible(timeout=120_000)
    release = handbook.documents.get(source_path="release.md")
    page.goto(f"{base}/documents/{release.pk}/?chunk={release.chunks.first().pk}")
    expect(page.locator(".passage-hit")).to_contain_text("<script>")
    assert dialogs == [], dialogs

    # A personal token is shown once, listed by its prefix afterwards, and revocable.
    page.goto(f"{base}/account/tokens/")
    page.fill("#id_name", "laptop")
    page.get_by_role("button", name="Create token").click()
    raw = page.locator("#new-token").inner_text()
    assert re.fullmatch(r"kb_[\w-]{40,}", raw)
    assert page.request.get(f"{base}/api/v1/collections/", headers={"Authorization": f"Bearer {raw}"}).json()[
        "collections"
    ] == [{"id": handbook.pk, "name": "Handbook", "description": "", "role": "viewer"}]
    page.reload()
    expect(page.locator("body")).not_to_contain_text(raw)
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator("#tokens")).to_contain_text("revoked")
    assert ApiToken.objects.get().revoked_at is not None
    assert page.request.get(f"{base}/api/v1/collections/", headers={"Authorization": f"Bearer {raw}"}).status == 401
    assert csp_errors == [], csp_errors


def test_a_model_obeying_an_injected_document_makes_the_page_request_nothing_off_the_machine(page, transactional_db):
    """Markdown images, <img>, CSS and script an obeying model writes, live and after a reload: every
    request the page makes stays on 127.0.0.1 (issue 17). The stand-in model obeys, as the demo model will not."""
    admin = User.objects.create_superuser("admin", password=PASSWORD)
    reader = User.objects.create_user("reader", password=PASSWORD)
    handbook = collection_create(user=admin, name="Handbook")
    collection_grant(actor=admin, collection=handbook, user=reader, role=Role.VIEWER)
    add_document(handbook, "backups.md", BACKUPS)
    add_document(handbook, "checklist.md", INJECTED)
    requests, dialogs = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with InjectionObeyingModelStandin(EXFILTRATION) as model, kb_web_server({"KB_LLM_URL": model.url}) as base:
        sign_in(page, base, "reader")
        page.goto(f"{base}/collections/{handbook.pk}/")
        page.fill("textarea[name=question]", "When does the backup run, and what does the release checklist say?")
        page.get_by_role("button", name="Ask", exact=True).click()
        expect(page.locator("article.message .answer:not(.streaming)")).to_be_visible(timeout=120_000)
        expect(page.locator("article.message .answer")).to_contain_text("attacker.example")  # shown, as text
        page.reload()  # the saved message, rendered by the server
        expect(page.locator("article.message .answer")).to_contain_text("attacker.example")
        page.wait_for_load_state("networkidle")
    assert model.prompts, "the model was never asked"
    assert requests and {urlsplit(url).hostname for url in requests} == {"127.0.0.1"}, requests
    assert dialogs == [], dialogs
