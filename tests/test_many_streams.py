"""Many answers at once in one web process: a few database connections for all, one look for every Stop flag.

Real uvicorn, Postgres and Redis; the model server is tests/standins.py's stand-in, slow on
purpose so that the answers overlap (bench/concurrency.py measures the same with hundreds).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from contextlib import aclosing

import anyio
import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.urls import reverse

from kb import answer_relay
from kb.models import Message
from kb.services.conversations import DISCONNECTED, message_answer, message_answer_start, message_ask
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user
from tests.helpers import in_own_thread, kb_web_server, session_cookies
from tests.standins import Behaviour, failing_model_server

WORDS = [f"w{i} " for i in range(200)]


def web_connections() -> int:
    """Connections to this test database held by other processes (kb.embedded_db names each after its process)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'kb-%%' AND application_name <> %s",
            [f"kb-{os.getpid()}"],
        )
        return cursor.fetchone()[0]


def post_question(client: httpx.Client, collection) -> str:
    """Ask as the page's htmx form does, which starts the answer; the path of its stream."""
    client.get(reverse("collection_detail", args=[collection.pk])).raise_for_status()
    posted = client.post(
        reverse("collection_ask", args=[collection.pk]),
        data={"question": "When does the backup run?"},
        headers={"HX-Request": "true", "X-CSRFToken": client.cookies["csrftoken"]},
    )
    posted.raise_for_status()
    return re.findall(r"/messages/\d+/stream/", posted.text)[-1]


def read_answer(client: httpx.Client, stream: str) -> str:
    """The tokens of an answer's stream, joined, once its done event has come."""
    tokens, event = [], None
    with client.stream("GET", stream) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                if event == "done":
                    return "".join(tokens)
            elif line.startswith("data: ") and event == "token":
                tokens.append(line.removeprefix("data: "))
    raise AssertionError("the stream ended without its done event")


def claimed_answers(count: int) -> list:
    """(message, sources, history) of `count` questions of one reader, each claimed for writing."""
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    claimed = []
    for i in range(count):
        message, _ = message_ask(user=user, question=f"When does the backup run? ({i})", collections=[collection])
        sources, history, _ = message_answer_start(user=user, message=message)
        claimed.append((message, sources, history))
    return claimed


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_questions_waits_its_turn_for_the_pool_rather_than_opening_a_connection_each(settings):
    askers, pool = 6, 2
    users = [make_user() for _ in range(askers)]
    collection = make_collection(viewer=users)
    add_document(collection, "backups.md", BACKUPS)
    streams: list[str | BaseException] = []

    def ask(client):
        try:
            streams.append(post_question(client, collection))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            streams.append(exc)

    with failing_model_server(Behaviour(tokens=WORDS[:20], delay_between=0.05)) as (url, _):
        settings.KB_LLM_URL = url
        with kb_web_server(env={"KB_DB_POOL_MAX_SIZE": str(pool), "KB_DB_POOL_TIMEOUT": "60"}) as web:
            clients = [httpx.Client(base_url=web, cookies=session_cookies(u), timeout=120) for u in users]
            threads = [threading.Thread(target=ask, args=(client,)) for client in clients]
            most = run_watching_connections(threads)
            for client in clients:
                client.close()
    assert len(streams) == askers and all(isinstance(s, str) for s in streams), streams
    assert 0 < most <= pool


def run_watching_connections(threads: list[threading.Thread]) -> int:
    """Start the threads and sample the web process's database connections until they end: the most seen."""
    for thread in threads:
        thread.start()
    most = 0
    while any(t.is_alive() for t in threads):
        most = max(most, web_connections())
        time.sleep(0.05)
    return most


@pytest.mark.django_db(transaction=True)
def test_pages_following_answers_at_once_share_a_pool_smaller_than_their_number(settings):
    streams, pool = 6, 2
    users = [make_user() for _ in range(streams + 1)]
    collection = make_collection(viewer=users)
    add_document(collection, "backups.md", BACKUPS)
    answers: list[str | BaseException] = []

    def follow(client, stream):
        try:
            answers.append(read_answer(client, stream))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            answers.append(exc)

    # 200 pieces, one each 50 ms: every answer lasts 10 s.
    with failing_model_server(Behaviour(tokens=WORDS, delay_between=0.05)) as (url, _):
        settings.KB_LLM_URL = url
        # Pages that kept their requests' connections while they wait on the model would leave
        # the third one waiting for a connection for seconds, past the pool's 3 s: an error.
        with kb_web_server(env={"KB_DB_POOL_MAX_SIZE": str(pool), "KB_DB_POOL_TIMEOUT": "3"}) as web:
            clients = [httpx.Client(base_url=web, cookies=session_cookies(u), timeout=60) for u in users]
            # The first question loads the embedding model (seconds, holding a connection): not measured.
            assert read_answer(clients[0], post_question(clients[0], collection)) == "".join(WORDS)
            paths = [post_question(client, collection) for client in clients[1:]]
            threads = [threading.Thread(target=follow, args=cs) for cs in zip(clients[1:], paths, strict=True)]
            most = run_watching_connections(threads)
            for client in clients:
                client.close()
    assert answers == ["".join(WORDS)] * streams
    assert 0 < most <= pool


@pytest.mark.django_db(transaction=True)  # the answers run on an event loop in a thread of their own
def test_answers_written_at_once_read_their_stop_flags_in_one_query_per_look(settings):
    answers = 8
    claimed = claimed_answers(answers)
    reads = []

    def count(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("SELECT") and "stop_requested" in sql:
            reads.append(sql)
        return execute(sql, params, many, context)

    async def write(message, sources, history):
        async with aclosing(message_answer(message=message, sources=sources, history=history)) as pieces:
            assert "".join([piece async for piece in pieces]) == "".join(WORDS[:40])

    async def all_at_once():
        await asyncio.gather(*(write(*c) for c in claimed))

    # 40 pieces, one each 50 ms: each answer streams for 2 s, all eight at the same time.
    with failing_model_server(Behaviour(tokens=WORDS[:40], delay_between=0.05)) as (url, _):
        settings.KB_LLM_URL = url

        def run() -> None:
            with connection.execute_wrapper(count):  # the connection of the thread the answers' queries run in
                async_to_sync(all_at_once)()

        in_own_thread(run)
    # Each answer reading its own flag four times a second would be 8 x 2 s x 4 = 64 reads.
    assert 0 < len(reads) < 3 * answers


@pytest.mark.django_db(transaction=True)  # the answers run on an event loop in a thread of their own
def test_a_hundred_and_fifty_pages_in_one_process_each_get_the_whole_answer_written_beside_them(settings):
    # redis-py's pool holds a hundred connections: a blocking read per page would not get there.
    answers = 150
    claimed = claimed_answers(answers)

    async def write(n, message, sources, history):
        await asyncio.sleep(n * 0.03)  # the stand-in, a thread per connection, takes them a few at a time
        async with aclosing(answer_relay.produce(message, sources, history)) as batches:
            async for _ in batches:
                pass

    async def read(message):
        async with aclosing(answer_relay.follow(message)) as batches:
            return "".join([piece async for batch in batches for _, piece in batch if isinstance(piece, str)])

    async def all_at_once():
        readers = [asyncio.ensure_future(read(m)) for m, _, _ in claimed]
        await asyncio.gather(*(write(n, *c) for n, c in enumerate(claimed)))
        return await asyncio.gather(*readers)

    with failing_model_server(Behaviour(tokens=WORDS[:20], delay_between=0.05)) as (url, _):
        settings.KB_LLM_URL = url
        assert in_own_thread(async_to_sync(all_at_once)) == ["".join(WORDS[:20])] * answers


@pytest.mark.django_db(transaction=True)  # the answer runs on an event loop in a thread of its own
def test_an_answer_cancelled_by_an_anyio_scope_still_stores_what_arrived(settings):
    # The MCP SDK (and any anyio caller) cancels through a cancel scope, which cancels every
    # await after the first as well: the answer's last write must still happen, or the message
    # stays "streaming" for good.
    ((message, sources, history),) = claimed_answers(1)
    got: list[str] = []

    async def read_for_a_while():
        with anyio.move_on_after(1.0):
            async with aclosing(message_answer(message=message, sources=sources, history=history)) as pieces:
                async for piece in pieces:
                    got.append(piece)

    # 200 pieces, one each 50 ms: the scope ends the answer about a fifth of the way through.
    with failing_model_server(Behaviour(tokens=WORDS, delay_between=0.05)) as (url, _):
        settings.KB_LLM_URL = url
        in_own_thread(async_to_sync(read_for_a_while))
    message.refresh_from_db()
    assert 0 < len(got) < len(WORDS)
    assert (message.status, message.error) == (Message.Status.INCOMPLETE, DISCONNECTED)
    assert message.answer == "".join(got)
