"""Answers that start when the question is posted, relayed through Redis to whichever web process the page reaches.

Real uvicorn processes, Redis, Postgres; the model server is tests/standins.py's stand-in,
which streams slowly on purpose so that a test can join, leave or resume mid-answer.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import httpx
import pytest
import redis
from django.urls import reverse

from kb import answer_relay
from kb.models import Message
from kb.services.conversations import DISCONNECTED
from tests.corpus import BACKUPS
from tests.factories import add_document, ask, make_collection, make_user
from tests.helpers import in_own_thread, kb_web_server, session_cookies, wait_for_status
from tests.standins import Behaviour, failing_model_server

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = [f"w{i} " for i in range(40)]


def reader_of_backups():
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    return user, collection


def post_question(web: str, user, collection, question: str = "When does the backup run?") -> Message:
    """Ask as the page's htmx form does; return the new message without opening its stream."""
    with httpx.Client(base_url=web, cookies=session_cookies(user), timeout=30) as client:
        client.get(reverse("collection_detail", args=[collection.pk])).raise_for_status()
        response = client.post(
            reverse("collection_ask", args=[collection.pk]),
            data={"question": question},
            headers={"HX-Request": "true", "X-CSRFToken": client.cookies["csrftoken"]},
        )
    assert response.status_code == 200
    return Message.objects.get(conversation__user=user, question=question)


def events(lines, *, stop_after_tokens: int | None = None):
    """(event, id, data) of each server-sent event, until `done` or `stop_after_tokens` tokens."""
    event, entry, data, tokens = None, None, [], 0
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("id: "):
            entry = line.removeprefix("id: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and event == "state":  # where the answer stands ("Writing…"), not a piece of it
            event, entry, data = None, None, []
        elif not line and event:
            yield event, entry, "\n".join(data)
            tokens += event == "token"
            if event == "done" or tokens == stop_after_tokens:
                return
            event, entry, data = None, None, []


def stream(web: str, user, message: Message, **headers):
    return httpx.stream(
        "GET", web + reverse("message_stream", args=[message.pk]), cookies=session_cookies(user), headers=headers,
        timeout=30,
    )  # fmt: skip


def test_the_posted_question_starts_the_answer_and_a_page_on_another_web_process_reads_all_of_it(settings):
    user, collection = reader_of_backups()
    with failing_model_server(Behaviour(tokens=WORDS, delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        with kb_web_server() as first, kb_web_server() as second:
            message = post_question(first, user, collection)
            # Nobody has opened the answer's stream, yet the model is already writing it.
            message = wait_for_status(message, Message.Status.STREAMING)
            deadline = time.monotonic() + 15
            while not record.tokens_sent and time.monotonic() < deadline:
                time.sleep(0.05)
            assert record.tokens_sent, "the model was not asked before the page connected"
            with stream(second, user, message) as response:
                seen = list(events(response.iter_lines()))
    tokens = [data for event, _, data in seen if event == "token"]
    assert "".join(tokens) == "".join(WORDS)  # from the first piece, none twice
    assert seen[-1][0] == "done" and "w39" in seen[-1][2]
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE and message.answer == "".join(WORDS)
    assert len(record.requests) == 1  # written once, by the first process


def test_an_answer_started_for_a_page_that_never_comes_is_stopped(settings):
    user, collection = reader_of_backups()
    with failing_model_server(Behaviour(delay_between=0.05)) as (url, record):  # 400 pieces: 20 s
        settings.KB_LLM_URL = url
        with kb_web_server(env={"KB_ANSWER_ATTACH_SECONDS": "1"}) as web:
            message = post_question(web, user, collection)
            message = wait_for_status(message, Message.Status.INCOMPLETE)
            assert record.finished.wait(10), "generation went on with nobody to read it"
    assert message.error == DISCONNECTED
    assert record.client_went_away and record.tokens_sent < 100


def test_an_answer_started_early_stops_when_its_last_reader_leaves(settings):
    user, collection = reader_of_backups()
    with failing_model_server(Behaviour(delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        with kb_web_server() as web:
            message = post_question(web, user, collection)
            with stream(web, user, message) as response:
                assert len(list(events(response.iter_lines(), stop_after_tokens=3))) == 3
            message = wait_for_status(message, Message.Status.INCOMPLETE)
            assert record.finished.wait(10)
    assert message.error == DISCONNECTED
    assert record.tokens_sent < 100
    assert message.answer.startswith("word0 word1 word2")


def test_a_second_reader_joins_and_a_reconnect_resumes_after_its_last_event(settings):
    user, message = ask()  # pending: the first page to connect writes it
    with failing_model_server(Behaviour(tokens=WORDS, delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        with kb_web_server() as web:
            with stream(web, user, message) as writer:
                lines = writer.iter_lines()
                first = list(events(lines, stop_after_tokens=5))
                with stream(web, user, message) as joined:  # a second tab: the answer so far, then the rest
                    joined_lines = joined.iter_lines()
                    everything = list(events(joined_lines, stop_after_tokens=5))
                    # An EventSource that lost its connection after the third piece comes back with its id.
                    with stream(web, user, message, **{"Last-Event-ID": first[2][1]}) as resumed:
                        after_third = list(events(resumed.iter_lines()))
                    everything += events(joined_lines)
                rest = list(events(lines))
    assert [d for e, _, d in after_third if e == "token"] == WORDS[3:]
    assert [d for e, _, d in everything if e == "token"] == WORDS
    assert [d for e, _, d in first + rest if e == "token"] == WORDS
    assert after_third[-1][0] == everything[-1][0] == rest[-1][0] == "done"
    assert len(record.requests) == 1


@contextmanager
def an_answer_that_ended_before_its_page(settings):
    """(web, user, message, the model's record): a question posted and answered with no page reading."""
    user, collection = reader_of_backups()
    with failing_model_server(Behaviour(tokens=WORDS)) as (url, record):
        settings.KB_LLM_URL = url
        with kb_web_server(env={"KB_ANSWER_ATTACH_SECONDS": "30"}) as web:
            message = wait_for_status(post_question(web, user, collection), Message.Status.COMPLETE)
            yield web, user, message, record


def test_a_page_that_connects_after_the_answer_ended_still_gets_it_piece_by_piece(settings):
    # A warm model can finish a short answer before the browser has swapped in the page and
    # connected (a Regenerate, say): the page gets the pieces a live reader got, then the end.
    with an_answer_that_ended_before_its_page(settings) as (web, user, message, record):
        with stream(web, user, message) as response:
            late = list(events(response.iter_lines()))
        with stream(web, user, message, **{"Last-Event-ID": late[2][1]}) as response:
            reconnected = list(events(response.iter_lines()))
    # Written with nobody reading, its pieces may share relay entries: the text is what counts.
    pieces = [d for e, _, d in late if e == "token"]
    assert "".join(pieces) == "".join(WORDS)
    resumed = "".join(d for e, _, d in reconnected if e == "token")
    assert resumed == "".join(pieces[3:])  # after its last event, none twice
    assert late[-1][0] == reconnected[-1][0] == "done" and "w39" in late[-1][2]
    assert len(record.requests) == 1


def test_a_page_that_connects_after_the_relay_expired_gets_the_final_answer(settings):
    with an_answer_that_ended_before_its_page(settings) as (web, user, message, _):
        redis.Redis.from_url(settings.REDIS_URL).delete(message.stream_key)  # as KEEP_SECONDS does
        with stream(web, user, message) as response:
            seen = list(events(response.iter_lines()))
    assert [e for e, _, _ in seen] == ["done"] and "w39" in seen[0][2]


def test_a_busy_writer_joins_its_queued_text_into_one_entry_and_keeps_sentences_apart(settings):
    # Pieces that come while the stream's last text still waits for Redis share its entry: with
    # hundreds of answers in a process, each entry costs Redis, the shared read and a page's write.
    key = f"kb:test:relay:{time.monotonic_ns()}"

    async def publish_while_busy(join: bool):
        relay = answer_relay._Relay()
        ids = [
            relay.publish(key, "0-1", {"t": "Backups "}, join=join),
            relay.publish(key, "0-2", {"t": "run "}, join=join),  # the first is not sent yet
            relay.publish(key, "0-3", {"s": "{}"}, join=join),  # a checked sentence: never joined
            relay.publish(key, "0-4", {"t": "nightly."}, join=join),
        ]
        await relay.sent()
        return ids

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        joined = in_own_thread(asyncio.run, publish_while_busy(True))
        entries = [(e.decode(), {k.decode(): v.decode() for k, v in f.items()}) for e, f in client.xrange(key)]
        client.delete(key)
        apart = in_own_thread(asyncio.run, publish_while_busy(False))
        separate = [e.decode() for e, _ in client.xrange(key)]
    finally:
        client.delete(key)
    assert joined == ["0-1", "0-1", "0-3", "0-4"]
    assert entries == [("0-1", {"t": "Backups run "}), ("0-3", {"s": "{}"}), ("0-4", {"t": "nightly."})]
    assert apart == separate == ["0-1", "0-2", "0-3", "0-4"]  # a page reading its writer resumes after any piece
