"""The model server offline banner (issue 15): what its check says, what it costs, and that it
appears and goes away in the browser without a reload."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from django.urls import reverse
from playwright.sync_api import expect

from tests.factories import make_user
from tests.helpers import PASSWORD, free_port, kb_web_server, sign_in
from tests.standins import loopback_server, send_json
from tests.ui import check_page

pytestmark = pytest.mark.django_db

OFFLINE = "The model server is offline. Answers show the passages found, without a written answer."


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def _models_handler(status_for: dict[str, int], seen: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            send_json(self, status_for.get(self.path, 404), {"object": "list", "data": []})

    return Handler


def _status(client, **headers):
    return client.get(reverse("model_status"), HTTP_HX_REQUEST="true", **headers)


def test_the_banner_says_offline_for_a_closed_port_and_never_shows_the_url(client, settings):
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"
    client.force_login(make_user())
    response = _status(client)
    assert response.status_code == 200
    body = response.content.decode()
    assert OFFLINE in body
    assert "127.0.0.1" not in body and settings.KB_LLM_URL not in body


def test_the_check_is_shared_by_requests_for_ten_seconds(client, settings):
    seen: list[str] = []
    with loopback_server(_models_handler({"/v1/models": 200}, seen)) as url:
        settings.KB_LLM_URL = url
        client.force_login(make_user())
        for _ in range(3):
            assert OFFLINE not in _status(client).content.decode()
        assert seen == ["/v1/models"]


def test_a_server_without_a_model_list_counts_as_up_when_its_health_check_answers(client, settings):
    seen: list[str] = []
    with loopback_server(_models_handler({"/health": 200}, seen)) as url:
        settings.KB_LLM_URL = url + "/v1"  # a base URL given with its /v1 suffix is checked at the server's root
        client.force_login(make_user())
        assert OFFLINE not in _status(client).content.decode()
    assert seen == ["/v1/models", "/health"]


def test_a_server_that_answers_errors_counts_as_offline(client, settings):
    with loopback_server(_models_handler({"/v1/models": 503, "/health": 503}, [])) as url:
        settings.KB_LLM_URL = url
        client.force_login(make_user())
        assert OFFLINE in _status(client).content.decode()


def test_a_busy_server_that_accepts_but_answers_late_is_not_called_offline(client, settings):
    """llama.cpp answers nothing else while it generates: a slow answer is busy, not offline
    (seen in the walk-through: the banner said offline while an answer was being written)."""
    release = threading.Event()

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            release.wait(10)  # past the check's timeout
            send_json(self, 200, {"object": "list", "data": []})

    with loopback_server(Busy) as url:
        settings.KB_LLM_URL = url
        client.force_login(make_user())
        try:
            body = _status(client).content.decode()
        finally:
            release.set()
    assert OFFLINE not in body


def test_pages_render_without_waiting_for_the_check(client, settings, monkeypatch):
    async def never(_base):
        raise AssertionError("a page render must not check the model server")

    monkeypatch.setattr("kb.llm._aprobe", never)
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"
    client.force_login(make_user())
    body = client.get(reverse("home")).content.decode()
    assert 'id="model-status"' in body and 'role="status"' in body and 'aria-live="polite"' in body
    assert f'hx-get="{reverse("model_status")}"' in body
    assert OFFLINE not in body


def test_signed_out_pages_have_no_banner(client):
    assert 'id="model-status"' not in client.get(reverse("login")).content.decode()


def test_a_poll_without_a_session_swaps_nothing_and_a_visit_goes_to_sign_in(client):
    assert _status(client).status_code == 204
    response = client.get(reverse("model_status"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_the_banner_is_empty_while_the_real_model_server_answers(client, model_server):
    client.force_login(make_user())
    response = _status(client)
    assert response.status_code == 200
    assert OFFLINE not in response.content.decode()


# --- in the browser -------------------------------------------------------------------------


class _Models(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        send_json(self, 200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_banner_appears_and_goes_away_without_a_reload(sized_page):
    """Offline on load; once the server answers (after the 10 s the check is kept), the next poll clears it."""
    page = sized_page
    port = free_port()
    make_user("reader", password=PASSWORD)
    with kb_web_server({"KB_LLM_URL": f"http://127.0.0.1:{port}"}) as base:
        sign_in(page, base, "reader")
        banner = page.locator("#model-status")
        expect(banner).to_have_text(OFFLINE, timeout=10_000)
        check_page(page, "model-offline")
        server = ThreadingHTTPServer(("127.0.0.1", port), _Models)
        try:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            page.wait_for_timeout(10_500)  # the cached "offline" expires
            marker = page.evaluate("() => { window.__same_page = true; return true; }")
            page.evaluate("() => document.body.dispatchEvent(new CustomEvent('kb:model-status'))")  # the 30 s poll, now
            expect(banner.locator(".model-offline")).to_have_count(0, timeout=10_000)
            assert marker and page.evaluate("() => window.__same_page === true")  # no reload happened
        finally:
            server.shutdown()
            server.server_close()
