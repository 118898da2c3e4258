"""Browsers that disconnect mid-answer leak nothing (issue 17): generation stops upstream, and the
web process's model-server streams, Redis keys and connections, and database connections come
back to where they were. Counted, not assumed.

The model server is tests/standins.py's slow stand-in (400 tokens, one each 50 ms) so that every
answer is still being written when its reader leaves; the web server, Redis and Postgres are real.
"""

from __future__ import annotations

import time

import httpx
import psutil
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse

from kb.models import Message
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user
from tests.helpers import kb_web_server, record_fault, session_cookies, wait_until
from tests.standins import Behaviour, failing_model_server

pytestmark = pytest.mark.django_db(transaction=True)

DISCONNECTS = 12


def _web_process(url: str) -> psutil.Process:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError("no process listens on the web server's port")


def _tcp_to(process: psutil.Process, port: int) -> int:
    return sum(1 for c in process.net_connections("tcp") if c.raddr and c.raddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)  # fmt: skip


def _db_connections(process: psutil.Process) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [f"kb-{process.pid}"])
        return cursor.fetchone()[0]


def _ask_and_leave(web: str, user, collection, question: str) -> Message:
    with httpx.Client(base_url=web, cookies=session_cookies(user), timeout=30) as client:
        client.get(reverse("collection_detail", args=[collection.pk])).raise_for_status()
        asked = client.post(reverse("collection_ask", args=[collection.pk]), data={"question": question},
                            headers={"HX-Request": "true", "X-CSRFToken": client.cookies["csrftoken"]})  # fmt: skip
        asked.raise_for_status()
        message = Message.objects.get(conversation__user=user, question=question)
        with client.stream("GET", reverse("message_stream", args=[message.pk])) as response:
            tokens = 0
            for line in response.iter_lines():
                tokens += line.startswith("event: token")
                if tokens >= 3:
                    break  # the tab is closed
    return message


def test_readers_leaving_mid_answer_stop_generation_and_leak_no_stream_key_or_connection(settings):
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    relay = redis.Redis.from_url(django_settings.REDIS_URL)
    llm_port = None
    with failing_model_server(Behaviour(delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        llm_port = int(url.rsplit(":", 1)[1])
        # One reader asks 13 times in a row while the answers left behind are still being stopped:
        # the per-user limits (docs/security.md) are not what this test is about.
        with kb_web_server({"KB_MAX_STREAMS_PER_USER": "100", "KB_ASK_PER_MINUTE": "100"}) as web:
            process = _web_process(web)
            # One answer to the end first: what a web process holds when idle after answering.
            messages = [_ask_and_leave(web, user, collection, "Warm-up: when does the backup run?")]
            wait_until(lambda: record.streams_open == 0, timeout=30, what="the warm-up to stop")
            baseline = {"threads": process.num_threads(), "fds": process.num_fds(),
                        "redis": _tcp_to(process, 6379), "db": _db_connections(process)}  # fmt: skip
            for i in range(DISCONNECTS):
                messages.append(_ask_and_leave(web, user, collection, f"Question {i}: when does the backup run?"))
            wait_until(lambda: record.streams_open == 0, timeout=30, what="every generation to stop upstream")
            for message in messages:
                wait_until(lambda m=message: Message.objects.get(pk=m.pk).status == Message.Status.INCOMPLETE,
                           timeout=30, what=f"message {message.pk} to end")  # fmt: skip
            time.sleep(2)  # what the process closes once its answers ended
            after = {"threads": process.num_threads(), "fds": process.num_fds(),
                     "redis": _tcp_to(process, 6379), "db": _db_connections(process)}  # fmt: skip
            model_streams = _tcp_to(process, llm_port)
    streams = [Message.objects.get(pk=m.pk).stream_key for m in messages]
    readers = [relay.get(f"{key}:readers") for key in streams]
    keys = [k for key in streams for k in relay.scan_iter(f"{key}*")]
    ttls = [relay.ttl(k) for k in keys]
    record_fault("disconnect_leaks", disconnects=DISCONNECTS, baseline=baseline, after=after,
                 model_streams_open=record.streams_open, model_connections=model_streams,
                 tokens_sent=record.tokens_sent, streams_most_at_once=record.streams_most,
                 relay_keys_without_expiry=sum(1 for t in ttls if t < 0))  # fmt: skip
    assert record.streams_open == 0 and model_streams == 0, "no generation goes on upstream"
    assert record.tokens_sent < (DISCONNECTS + 1) * 100, "each stopped after a few tokens, not 400"
    assert keys and all(t > 0 for t in ttls), "every key a relayed answer left in Redis expires"
    assert all(r in (None, b"0") for r in readers), "no reader counted after they all left"
    assert after["threads"] <= baseline["threads"] + 2
    assert after["fds"] <= baseline["fds"] + 4
    # redis-py keeps a connection it opened for two answers at once in its pool: one more is no leak,
    # thirteen (one per answer) would be.
    assert after["redis"] <= baseline["redis"] + 2
    assert after["db"] <= max(baseline["db"], django_settings.KB_DB_POOL_MAX_SIZE)
