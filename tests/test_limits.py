"""Limits per user (kb.limits): question size, questions a minute, answers at once, uploads an hour, files an upload.

Real Redis, Postgres and (for /v1 and MCP) uvicorn with the official clients. Each test clears
this test database's limit keys in Redis, and sets short windows with `settings` rather than
sleeping through a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta
from pathlib import Path

import httpx2
import openai
import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import expect

from kb import limits
from kb.models import Conversation, Document, Message
from kb.services.conversations import message_stop
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user
from tests.helpers import PASSWORD, in_own_thread, kb_web_server, sign_in

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
QUESTION = "When does the backup run?"


@pytest.fixture(autouse=True)
def _limit_keys():
    """This test database's limit counters in Redis, cleared before and after each test."""

    def clear():
        r = redis.Redis.from_url(django_settings.REDIS_URL)
        for key in r.scan_iter(match=f"kb:limits*{connection.settings_dict['NAME']}*", count=1000):
            r.delete(key)

    clear()
    yield
    clear()


def _bearer(user) -> dict:
    return {"Authorization": f"Bearer {api_token_create(user=user, name='limits')[1]}"}


def _empty_world():
    """A reader of a collection with nothing in it: every question is answered "not found" at once."""
    reader = make_user()
    return reader, make_collection(viewer=[reader])


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _ask_page(client: Client, collection, question: str = QUESTION, **headers):
    return client.post(reverse("collection_ask", args=[collection.pk]), {"question": question}, headers=headers)


def _api_ask(client: Client, user_headers: dict, collection, question: str = QUESTION):
    body = json.dumps({"question": question, "collections": [collection.pk]})
    return client.post(reverse("api_ask"), body, content_type="application/json", headers=user_headers)


# --- question size ------------------------------------------------------------------------


def test_a_question_over_the_limit_is_refused_on_the_page_saying_the_limit(settings):
    settings.KB_MAX_QUESTION_CHARS = 50
    reader, collection = _empty_world()
    client = _signed_in(reader)
    long = "why " * 15  # 60 characters

    plain = _ask_page(client, collection, long)
    assert plain.status_code == 400
    assert "Questions are limited to 50 characters; this one has 59" in plain.content.decode()
    htmx = _ask_page(client, collection, long, **HX)
    assert htmx.status_code == 422 and htmx["HX-Retarget"] == "#ask-error"
    assert "limited to 50 characters" in htmx.content.decode()
    assert not Message.objects.filter(conversation__user=reader).exists()
    assert _ask_page(client, collection, "why " * 12).status_code == 302  # 47 characters: asked


def test_a_question_over_the_limit_is_refused_by_the_json_api(settings):
    settings.KB_MAX_QUESTION_CHARS = 50
    reader, collection = _empty_world()
    response = _api_ask(Client(), _bearer(reader), collection, "x" * 51)
    assert response.status_code == 400
    assert response.json() == {
        "error": "Questions are limited to 50 characters; this one has 51. Shorten it and ask again."
    }
    assert not Message.objects.filter(conversation__user=reader).exists()


# --- questions a minute -------------------------------------------------------------------


@pytest.mark.parametrize("staff", [False, True], ids=["reader", "staff"])
def test_questions_past_the_rate_get_429_with_retry_after_then_pass_once_the_window_moves_on(settings, staff):
    settings.KB_ASK_PER_MINUTE, settings.KB_ASK_WINDOW_SECONDS = 2, 2
    reader = make_user(is_staff=staff, is_superuser=staff)  # staff are not exempt
    collection = make_collection(viewer=[reader])
    client = _signed_in(reader)
    assert [_ask_page(client, collection).status_code for _ in range(2)] == [302, 302]

    plain = _ask_page(client, collection)
    assert plain.status_code == 429
    wait = int(plain["Retry-After"])
    assert 1 <= wait <= 2
    assert (
        plain.content.decode()
        == f"You have asked 2 questions in the last 2 seconds; try again in {wait} second{'s' if wait > 1 else ''}."
    )
    htmx = _ask_page(client, collection, **HX)
    assert htmx.status_code == 422 and htmx["HX-Retarget"] == "#ask-error" and htmx["HX-Reswap"] == "innerHTML"
    assert "You have asked 2 questions in the last 2 seconds" in htmx.content.decode() and htmx["Retry-After"]
    assert Message.objects.filter(conversation__user=reader).count() == 2  # the refused were not recorded

    time.sleep(wait + 0.1)
    assert _ask_page(client, collection).status_code == 302


def test_the_rate_counts_every_way_of_asking_together_and_the_json_api_refuses_with_429(settings):
    settings.KB_ASK_PER_MINUTE = 2
    reader, collection = _empty_world()
    headers = _bearer(reader)
    assert _ask_page(_signed_in(reader), collection).status_code == 302
    assert _api_ask(Client(), headers, collection).status_code == 200

    refused = _api_ask(Client(), headers, collection)
    assert refused.status_code == 429 and 50 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["error"].startswith("You have asked 2 questions in the last minute; try again in ")
    # Another user's count is their own.
    other = make_user()
    assert _api_ask(Client(), _bearer(other), make_collection(viewer=[other])).status_code == 200


# --- answers at once ----------------------------------------------------------------------


@pytest.fixture
def answered_world():
    """A reader of a collection whose document answers QUESTION: an ask leaves an answer to be written."""
    reader = make_user()
    collection = make_collection(viewer=[reader])
    add_document(collection, "backups.md", BACKUPS)
    return reader, collection


def _being_written(reader) -> list[Message]:
    return list(Message.objects.filter(conversation__user=reader, status=Message.Status.PENDING))


def test_a_question_while_the_most_answers_are_being_written_is_refused_until_one_ends(settings, answered_world):
    settings.KB_MAX_STREAMS_PER_USER = 2
    reader, collection = answered_world
    client = _signed_in(reader)
    assert [_ask_page(client, collection).status_code for _ in range(2)] == [302, 302]
    first, _ = _being_written(reader)  # nobody opened their streams: both still to be written

    refused = _ask_page(client, collection)
    assert refused.status_code == 429 and refused["Retry-After"] == str(limits.STREAMS_RETRY_SECONDS)
    assert "You already have 2 answers being written, the most kb writes for one person at once (2)" in (
        refused.content.decode()
    )
    htmx = _ask_page(client, collection, **HX)
    assert htmx.status_code == 422 and "2 answers being written" in htmx.content.decode()
    api = _api_ask(Client(), _bearer(reader), collection)
    assert api.status_code == 429 and "2 answers being written" in api.json()["error"]
    assert len(_being_written(reader)) == 2

    message_stop(user=reader, message=first)  # one ends: a place is free
    assert _ask_page(client, collection).status_code == 302


def test_regenerating_counts_as_an_answer_being_written(settings, answered_world):
    settings.KB_MAX_STREAMS_PER_USER = 1
    reader, collection = answered_world
    client = _signed_in(reader)
    assert _ask_page(client, collection).status_code == 302
    (pending,) = _being_written(reader)
    other = Message.objects.create(conversation=pending.conversation, question=QUESTION, status=Message.Status.COMPLETE,
                                   answer="Nightly.")  # fmt: skip
    refused = client.post(reverse("message_regenerate", args=[other.pk]), headers=HX)
    assert refused.status_code == 422 and refused["HX-Retarget"] == f"#message-{other.pk} .message-error"
    assert "1 answer being written" in refused.content.decode()


def test_an_answer_left_writing_by_a_dead_process_stops_counting_after_a_while(settings, answered_world):
    settings.KB_MAX_STREAMS_PER_USER = 1
    reader, collection = answered_world
    client = _signed_in(reader)
    assert _ask_page(client, collection).status_code == 302
    assert _ask_page(client, collection).status_code == 429
    (stuck,) = _being_written(reader)
    long_ago = timezone.now() - limits.STALE_AFTER - timedelta(seconds=1)
    Message.objects.filter(pk=stuck.pk).update(created_at=long_ago, status=Message.Status.STREAMING)
    Conversation.objects.filter(pk=stuck.conversation_id).update(updated_at=long_ago)
    assert _ask_page(client, collection).status_code == 302


def test_asks_still_on_their_way_in_other_processes_count_before_they_have_a_row(settings):
    settings.KB_MAX_STREAMS_PER_USER = 2
    reader, collection = _empty_world()
    # Two asks of this user in flight elsewhere (a script firing at once): neither has a row yet.
    assert limits._asking_begin(reader) == 0 and limits._asking_begin(reader) == 1
    refused = _ask_page(_signed_in(reader), collection)
    assert refused.status_code == 429 and "2 answers being written" in refused.content.decode()
    limits._asking_end(reader)
    assert _ask_page(_signed_in(reader), collection).status_code == 302
    limits._asking_end(reader)
    # Its own ask, ended, is no longer counted.
    assert limits._asking_begin(reader) == 0


# --- uploads ------------------------------------------------------------------------------


@pytest.fixture
def editor_world():
    editor = make_user()
    return editor, make_collection(editor=[editor])


def _stored_files() -> set[Path]:
    return {p for p in Path(django_settings.MEDIA_ROOT).rglob("*") if p.is_file()}


def _upload_page(client: Client, collection, *files: tuple[str, bytes], **headers):
    data = {"files": [SimpleUploadedFile(name, content) for name, content in files]}
    return client.post(reverse("document_upload", args=[collection.pk]), data, headers=headers)


def _api_upload(client: Client, headers: dict, collection, *files: tuple[str, bytes]):
    data = {"files": [SimpleUploadedFile(name, content) for name, content in files]}
    return client.post(reverse("api_documents_upload", args=[collection.pk]), data, headers=headers)


def _flash(client: Client, collection) -> str:
    return client.get(reverse("collection_detail", args=[collection.pk])).content.decode()


def test_uploads_past_the_hourly_rate_are_refused_with_a_message_and_store_nothing(settings, editor_world):
    settings.KB_UPLOADS_PER_HOUR, settings.KB_UPLOAD_WINDOW_SECONDS = 1, 2
    editor, collection = editor_world
    client = _signed_in(editor)
    assert _upload_page(client, collection, ("a.md", b"# A\n\nalpha\n")).status_code == 302
    documents, files = Document.objects.count(), _stored_files()

    plain = _upload_page(client, collection, ("b.md", b"# B\n\nbeta\n"))
    assert plain.status_code == 302 and plain["Location"] == reverse("collection_detail", args=[collection.pk])
    assert "You have uploaded 1 time in the last 2 seconds; try again in" in _flash(client, collection)
    htmx = _upload_page(client, collection, ("b.md", b"# B\n\nbeta\n"), **HX)
    assert htmx.status_code == 429 and htmx["HX-Refresh"] == "true" and htmx["Retry-After"]
    assert "You have uploaded 1 time" in _flash(client, collection)  # what the refreshed page shows
    api = _api_upload(Client(), _bearer(editor), collection, ("b.md", b"# B\n\nbeta\n"))
    assert api.status_code == 429 and api.json()["error"].startswith("You have uploaded 1 time") and api["Retry-After"]
    assert Document.objects.count() == documents and _stored_files() == files

    time.sleep(int(api["Retry-After"]) + 0.1)
    assert _upload_page(client, collection, ("b.md", b"# B\n\nbeta\n")).status_code == 302
    assert Document.objects.count() == documents + 1


def test_an_upload_of_too_many_files_is_a_message_not_a_bare_400_and_stores_nothing(settings, editor_world):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    editor, collection = editor_world
    # As a browser: the CSRF check reads the request, and Django counts the files there.
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor)
    client.get(reverse("collection_detail", args=[collection.pk]))
    csrf = {"X-CSRFToken": client.cookies["csrftoken"].value}
    three = [(f"{n}.md", f"# {n}\n\ntext {n}\n".encode()) for n in "abc"]
    documents, files = Document.objects.count(), _stored_files()

    plain = _upload_page(client, collection, *three, **csrf)
    assert plain.status_code == 302
    said = "An upload holds at most 2 files; this one had more, and nothing of it was kept."
    assert said in _flash(client, collection)
    htmx = _upload_page(client, collection, *three, **csrf, **HX)
    assert htmx.status_code == 400 and htmx["HX-Refresh"] == "true"
    assert said in _flash(client, collection)
    api = _api_upload(Client(), _bearer(editor), collection, *three)
    assert api.status_code == 400 and api.json() == {"error": said + " Upload them in parts, or as a ZIP archive."}
    assert Document.objects.count() == documents and _stored_files() == files
    assert _upload_page(client, collection, *three[:2], **csrf).status_code == 302  # two pass
    assert Document.objects.count() == documents + 2


def test_a_file_over_the_size_limit_is_named_and_refused_and_stores_nothing(settings, editor_world):
    # Refused by kb.services.documents (KB_MAX_UPLOAD_MB); checked here with the other upload limits.
    settings.KB_MAX_UPLOAD_MB = 1
    editor, collection = editor_world
    client = _signed_in(editor)
    big = ("big.md", b"# Big\n\n" + b"word " * 220_000)  # 1.05 MB
    documents, files = Document.objects.count(), _stored_files()

    said = "big.md: big.md is 1.0 MB; the limit is 1 MB."
    assert _upload_page(client, collection, big).status_code == 302
    assert said in _flash(client, collection)
    htmx = _upload_page(client, collection, big, **HX)
    assert htmx.status_code == 200 and said in htmx.content.decode()
    api = _api_upload(Client(), _bearer(editor), collection, big)
    assert api.status_code == 400 and api.json()["documents"][0]["error"] == said.split(": ", 1)[1]
    assert Document.objects.count() == documents and _stored_files() == files


# --- /v1 (the openai client) and MCP, against uvicorn ---------------------------------------


def _mcp(web: str, token: str, tool: str, arguments: dict):
    async def main():
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
            streamable_http_client(f"{web}/mcp", http_client=http) as streams,
            ClientSession(*streams) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments)

    return in_own_thread(asyncio.run, main())


def _tool_error(result) -> str:
    assert result.is_error, result
    return " ".join(c.text for c in result.content)


@pytest.mark.django_db(transaction=True)
def test_openai_client_and_mcp_tools_are_refused_with_each_limit():
    reader, collection = _empty_world()
    token = api_token_create(user=reader, name="limits")[1]
    env = {"KB_MAX_QUESTION_CHARS": "50", "KB_ASK_PER_MINUTE": "3", "KB_MAX_STREAMS_PER_USER": "2"}
    with kb_web_server(env=env) as web:
        api = openai.OpenAI(base_url=f"{web}/v1", api_key=token, max_retries=0, timeout=120)
        model = f"kb/{collection.pk}"

        def chat(question: str = QUESTION):
            return api.chat.completions.create(model=model, messages=[{"role": "user", "content": question}])

        # Size: 400 in OpenAI's shape; tool errors. Nothing is counted.
        with pytest.raises(openai.BadRequestError) as too_long:
            chat("x" * 51)
        assert too_long.value.status_code == 400 and too_long.value.code == "string_above_max_length"
        assert too_long.value.body["message"].startswith("Questions are limited to 50 characters; this one has 51")
        for tool, key in (("ask", "question"), ("search", "query")):
            assert "limited to 50 characters" in _tool_error(_mcp(web, token, tool, {key: "y" * 51}))

        # Answers at once: two of the reader's answers are being written (in any process).
        conversation = Conversation.objects.create(user=reader)
        writing = [Message.objects.create(conversation=conversation, question=QUESTION, status=Message.Status.STREAMING)
                   for _ in range(2)]  # fmt: skip
        with pytest.raises(openai.RateLimitError) as streams:
            chat()
        assert streams.value.status_code == 429 and streams.value.response.headers["Retry-After"] == "5"
        assert "2 answers being written" in streams.value.body["message"] and streams.value.code == "too_many_streams"
        assert "2 answers being written" in _tool_error(_mcp(web, token, "ask", {"question": QUESTION}))
        assert not _mcp(web, token, "search", {"query": "backup"}).is_error  # a search writes no answer
        Message.objects.filter(pk__in=[m.pk for m in writing]).update(status=Message.Status.COMPLETE)

        # Questions a minute: the search above was counted; two more pass, then none.
        assert [chat().choices[0].finish_reason for _ in range(2)] == ["stop", "stop"]
        with pytest.raises(openai.RateLimitError) as rate:
            chat()
        assert rate.value.status_code == 429 and rate.value.body["type"] == "rate_limit_exceeded"
        assert rate.value.body["message"].startswith("You have asked 3 questions in the last minute; try again in ")
        assert 1 <= int(rate.value.response.headers["Retry-After"]) <= 60
        searched = _tool_error(_mcp(web, token, "search", {"query": "backup"}))
        assert "You have searched or asked 3 times in the last minute; try again in " in searched
        assert "You have asked 3 questions" in _tool_error(_mcp(web, token, "ask", {"question": QUESTION}))


# --- in Chromium: the message is on the page --------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_in_the_browser_a_refused_question_and_a_refused_upload_are_said_on_the_page(page):
    editor = make_user("editor", password=PASSWORD)
    collection = make_collection(editor=[editor])
    env = {"KB_ASK_PER_MINUTE": "1", "KB_UPLOADS_PER_HOUR": "1"}
    with kb_web_server(env=env) as web:
        sign_in(page, web, "editor")
        page.goto(f"{web}{reverse('collection_detail', args=[collection.pk])}")
        page.fill("#id_question", QUESTION)
        page.click("form.ask button[type=submit]")
        expect(page).to_have_url(re.compile(r"/conversations/\d+/$"), timeout=60_000)  # asked: its page
        page.fill("#id_question", "And the restore?")
        page.click("form.ask button[type=submit]")
        expect(page.locator("#ask-error")).to_contain_text("You have asked 1 question in the last minute; try again in")
        expect(page.locator("#id_question")).to_have_value("And the restore?")  # kept, to send again later

        page.goto(f"{web}{reverse('collection_detail', args=[collection.pk])}")
        for name in ("a.md", "b.md"):
            page.set_input_files("input[type=file]", files=[{"name": name, "mimeType": "text/markdown",
                                                              "buffer": f"# {name}\n\ntext\n".encode()}])  # fmt: skip
            page.click("form[hx-encoding] button[type=submit]")
            if name == "a.md":
                expect(page.locator("#batches")).to_contain_text("a.md")
        expect(page.locator(".flash")).to_contain_text("You have uploaded 1 time in the last hour; try again in")
    assert list(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == ["a.md"]


def test_raising_the_question_limit_lets_a_longer_question_through_the_form_and_the_service(settings):
    from kb.forms import AskForm
    from kb.services.conversations import message_ask

    user = make_user()
    collection = make_collection(viewer=[user])
    long_question = "Why is the nightly backup slow? " * 80  # 2,560 characters
    settings.KB_MAX_QUESTION_CHARS = 3000
    form = AskForm({"question": long_question})
    assert form.is_valid(), form.errors
    assert 'maxlength="3000"' in str(form["question"])
    message, _ = message_ask(user=user, question=long_question, collections=[collection])
    assert message.question == long_question.strip()
    settings.KB_MAX_QUESTION_CHARS = 2000
    assert not AskForm({"question": long_question}).is_valid()
