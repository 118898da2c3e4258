"""In Chromium: an editor adds an intranet site as a source, watches its first sync, and a reader's
answer cites the page with a link to the page's own address on that site."""

from __future__ import annotations

import re
from http.server import SimpleHTTPRequestHandler

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.access import system_user
from kb.services.collections import collection_create, collection_grant
from tests.helpers import ARTIFACTS, PASSWORD, celery_worker, kb_web_server, sign_in
from tests.standins import loopback_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SITE = {
    "/": "<html><head><title>Intranet</title></head><body><nav><a href='/handbook/'>Handbook</a></nav>"
    "<main><h1>Intranet</h1><p>Welcome to the intranet.</p></main></body></html>",
    "/handbook/": "<html><head><title>Handbook</title></head><body><main><h1>Handbook</h1>"
    "<ul><li><a href='/handbook/parking'>Parking</a></li></ul></main></body></html>",
    "/handbook/parking": "<html><head><title>Parking for visitors</title></head><body><main>"
    "<h1>Parking for visitors</h1><p>Visitor parking is in garage B on level minus two. Reception hands out "
    "a parking ticket that visitors show at the barrier when they leave.</p></main></body></html>",
}


class _Site(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/robots.txt":
            body, status = b"User-agent: *\nAllow: /\n", 200
        else:
            page = SITE.get(self.path)
            body, status = (page.encode(), 200) if page else (b"not here", 404)
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8" if status == 200 else "text/plain")
        self.send_header("Last-Modified", "Tue, 03 Mar 2026 09:00:00 GMT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_editor_adds_a_site_and_an_answer_links_to_the_original_page(page, model_server, tmp_path):
    User.objects.create_user("editor", password=PASSWORD)
    collection = collection_create(user=system_user(), name="Facilities")
    collection_grant(actor=system_user(), collection=collection, user=User.objects.get(username="editor"),
                     role="editor")  # fmt: skip
    # The stand-in intranet listens on loopback, which kb refuses unless the operator allows it.
    env = {"KB_SOURCE_ALLOWED_HOSTS": "127.0.0.1", "KB_SOURCE_DELAY": "0"}
    with loopback_server(_Site) as site, celery_worker(env), kb_web_server(env) as base:
        sign_in(page, base, "editor")
        page.goto(f"{base}/collections/{collection.pk}/")
        page.get_by_role("link", name="Add a source").click()
        page.select_option("#id_kind", "web")
        page.fill("#id_location", f"{site}/")
        page.get_by_role("button", name="Add and sync").click()
        expect(page.locator("h1")).to_contain_text("127.0.0.1")
        # The runs table polls until the run is done and its pages are indexed.
        runs = page.locator("#runs")
        expect(runs.locator("tr.run-done")).to_have_count(1, timeout=120_000)
        expect(runs).not_to_contain_text("indexed", timeout=120_000)
        expect(runs.locator("tr.run-done td").nth(3)).to_have_text("3")  # three pages added
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "source.png"), full_page=True)

        page.goto(f"{base}/collections/{collection.pk}/")
        sources_card = page.locator("#sources")
        expect(sources_card).to_contain_text("3 new")  # the collection page summarises the last run
        page.screenshot(path=str(ARTIFACTS / "collection-sources.png"), full_page=True)
        page.fill("textarea[name=question]", "Where do visitors park?")
        page.get_by_role("button", name="Ask", exact=True).click()
        expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)
        sources = page.locator("article.message ol.sources li")
        expect(sources.first).to_contain_text("Parking for visitors", timeout=120_000)
        original = sources.first.get_by_role("link", name="original page")
        expect(original).to_have_attribute("href", f"{site}/handbook/parking")
        expect(sources.first).to_contain_text("updated")
        with page.context.expect_page() as opened:
            original.click()
        source_page = opened.value
        source_page.wait_for_load_state()
        assert source_page.url == f"{site}/handbook/parking"
        expect(source_page.locator("h1")).to_have_text("Parking for visitors")
        page.screenshot(path=str(ARTIFACTS / "source-answer.png"), full_page=True)
