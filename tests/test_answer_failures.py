"""How an answer ends when the model server misbehaves or the reader leaves or stops it.

The faults come from tests/standins.py's failing model server, which speaks the real
streaming chat API; everything else (Django's ASGI stack, uvicorn, Postgres) is real.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import httpx
import pytest
from django.test import Client
from django.urls import reverse

from kb.models import Message
from kb.services.conversations import DISCONNECTED, STOPPED
from tests.factories import ask, make_user
from tests.helpers import kb_web_server, read_stream, session_cookies, wait_for_status
from tests.standins import Behaviour, failing_model_server

pytestmark = pytest.mark.django_db


def test_model_server_dying_mid_stream_keeps_the_partial_answer_marked_incomplete(settings):
    user, message = ask()
    behaviour = Behaviour(tokens=["Backups ", "run ", "nightly ", "at ", "02:00 ", "[1]."], fail_after=3)
    with failing_model_server(behaviour) as (url, record):
        settings.KB_LLM_URL = url
        events = read_stream(user, message)
    assert [data for event, data in events if event == "token"] == ["Backups ", "run ", "nightly "]
    assert events[-1][0] == "done"
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE
    assert message.answer == "Backups run nightly "
    assert "broke off" in message.error
    assert "Incomplete" in events[-1][1] and "Backups run nightly" in events[-1][1]


def test_slow_model_server_times_out_with_an_actionable_error(settings):
    user, message = ask()
    settings.KB_LLM_TIMEOUT = 0.5
    with failing_model_server(Behaviour(delay_before=3)) as (url, _):
        settings.KB_LLM_URL = url
        started = time.monotonic()
        events = read_stream(user, message)
        waited = time.monotonic() - started
    assert waited < 2.5, "the configured timeout, not the server, should end the wait"
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert "did not answer within 0.5 s" in message.error
    assert "did not answer within 0.5 s" in events[-1][1]


def test_model_server_stalling_mid_stream_keeps_what_arrived(settings):
    user, message = ask()
    settings.KB_LLM_TIMEOUT = 0.5
    with failing_model_server(Behaviour(tokens=["Nightly ", "at ", "two."], fail_after=2, failure="stall")) as (
        url,
        _,
    ):
        settings.KB_LLM_URL = url
        read_stream(user, message)
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE
    assert message.answer == "Nightly at "
    assert "did not answer within" in message.error


def test_model_server_error_status_is_reported_without_an_answer(settings):
    user, message = ask()
    with failing_model_server(Behaviour(status=500)) as (url, record):
        settings.KB_LLM_URL = url
        read_stream(user, message)
    assert len(record.requests) >= 1
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert "HTTP 500" in message.error
    assert message.answer == ""


# Through a real uvicorn: disconnects and Stop --------------------------------------------------


def read_tokens(lines, count: int) -> list[str]:
    """Read server-sent event lines until `count` tokens have arrived; return the event names seen."""
    seen: list[str] = []
    for line in lines:
        if line.startswith("event: "):
            seen.append(line.removeprefix("event: "))
            if seen.count("token") >= count:
                break
    return seen


@contextmanager
def streaming_through_uvicorn(settings, user, message):
    """A real uvicorn streaming the message's answer from a slow stand-in model server.

    Yields (the open SSE response, its line iterator, what the model server saw); 400 tokens,
    one every 50 ms: twenty seconds of answer if nobody stops it.
    """
    with failing_model_server(Behaviour(delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        with kb_web_server() as web:
            stream_url = web + reverse("message_stream", args=[message.pk])
            with httpx.stream("GET", stream_url, cookies=session_cookies(user), timeout=10) as response:
                assert response.status_code == 200
                yield response, response.iter_lines(), record
            assert record.finished.wait(10), "generation went on after the stream ended"


@pytest.mark.django_db(transaction=True)
def test_client_disconnect_stops_generation_and_keeps_the_partial_answer(settings):
    user, message = ask()
    with streaming_through_uvicorn(settings, user, message) as (_, lines, record):
        read_tokens(lines, 3)
    # The browser is gone: the server closed the model stream and kept what arrived.
    message = wait_for_status(message, Message.Status.INCOMPLETE)
    assert record.client_went_away
    assert record.tokens_sent < 100
    assert message.error == DISCONNECTED
    assert message.answer.startswith("word0 word1 word2")


@pytest.mark.django_db(transaction=True)
def test_stop_button_ends_generation_and_the_stream_sends_the_final_state(settings):
    user, message = ask()
    with streaming_through_uvicorn(settings, user, message) as (_, lines, record):
        read_tokens(lines, 2)
        client = Client()
        client.force_login(user)
        stopped = client.post(reverse("message_stop", args=[message.pk]), headers={"HX-Request": "true"})
        assert stopped.status_code == 204
        rest = "\n".join(lines)
    assert "event: done" in rest
    assert "Stopped at your request." in rest
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE
    assert message.error == STOPPED
    assert record.tokens_sent < 100


def test_stopping_an_answer_that_has_not_begun_ends_it_at_once():
    user, message = ask()
    client = Client()
    client.force_login(user)
    response = client.post(reverse("message_stop", args=[message.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "Stopped at your request." in response.content.decode()
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE
    # A stream that connects afterwards only sends the final state; the model is never called.
    events = read_stream(user, message)
    assert [e for e, _ in events] == ["done"]


def test_another_user_cannot_stop_an_answer():
    user, message = ask()
    client = Client()
    client.force_login(make_user())
    assert client.post(reverse("message_stop", args=[message.pk])).status_code == 404
    message.refresh_from_db()
    assert message.status == Message.Status.PENDING and not message.stop_requested
