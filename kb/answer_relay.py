"""An answer's pieces relayed through Redis, so that writing can start before anyone reads.

Asking used to be: POST the question (retrieval), get the page, open its event stream, and
only then call the model. Now the POST starts the answer itself, in its own web process,
as an asyncio task that publishes every piece to a Redis stream; the page's event stream,
opened a moment later by whichever web process the browser reaches, follows that Redis
stream. The model is working while the browser swaps in the page and connects (one round
trip and the page's work: 50-80 ms of the time to first token, docs/benchmarks.md).

The same relay serves a second tab and an EventSource that reconnects: events carry the
Redis entry id, and a reconnect resumes after its Last-Event-ID.

Written here rather than taken from a library: django-eventstream and channels bring their
own storage, routing and consumers for what is a single Redis stream per answer, and neither
knows that closing the last reader must stop the model. Redis is already kb's Celery broker.

Without Redis (or without an event loop in this process: the test client, WSGI), nothing
starts early and the event stream writes the answer itself, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing

from django.conf import settings

from kb import verification
from kb.models import Message
from kb.services.conversations import STOP_POLL_SECONDS, message_answer, message_answer_start

logger = logging.getLogger(__name__)

# How long a relayed answer stays readable after it ends (a reload or a late second tab).
KEEP_SECONDS = 3600
# How often a reader without news asks the database whether the answer ended elsewhere.
IDLE_CHECK_SECONDS = 1.0

# One client per event loop: redis.asyncio connections belong to the loop that opened them.
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The running loop of this web process, seen by kb.asgi on each request; sync views (which
# run in worker threads) start answers on it.
_loop: asyncio.AbstractEventLoop | None = None
# Started answers, kept referenced until done (the loop only holds weak references to tasks).
_tasks: set[asyncio.Task] = set()


def remember_loop() -> None:
    """Called by kb.asgi in the event loop of every request."""
    global _loop
    _loop = asyncio.get_running_loop()


def _client():
    import redis.asyncio as redis

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
        _clients[loop] = client
    return client


def _readers_key(stream_key: str) -> str:
    return f"{stream_key}:readers"


class _Publisher:
    """Appends one answer's pieces to its stream; Redis failing only stops the relaying."""

    def __init__(self, stream_key: str):
        self.key = stream_key
        self.ok = bool(stream_key)

    async def publish(self, **fields: str) -> str | None:
        if not self.ok:
            return None
        try:
            async with _client().pipeline(transaction=False) as pipe:
                entry, _ = await pipe.xadd(self.key, fields).expire(self.key, KEEP_SECONDS, nx=True).execute()
            return entry.decode()
        except Exception as exc:  # a broken relay must not cost the reader in front of us the answer
            logger.warning("answer relay %s: Redis failed, relaying stops: %s", self.key, exc)
            self.ok = False
            return None


async def produce(
    message: Message, sources: list[dict], history
) -> AsyncIterator[tuple[str | None, str | verification.Checked]]:
    """Write a claimed message's answer: (relay entry id, piece or checked sentence), published for other readers."""
    publisher = _Publisher(message.stream_key)
    try:
        answer = message_answer(message=message, sources=sources, history=history, checked=True)
        async with aclosing(answer) as pieces:
            async for piece in pieces:
                if isinstance(piece, verification.Checked):
                    yield await publisher.publish(s=json.dumps(piece.as_json())), piece
                else:
                    yield await publisher.publish(t=piece), piece
    finally:
        # Also after a cancellation: readers elsewhere learn that it ended, and how, from the row.
        await publisher.publish(end="1")


async def follow(message: Message, *, after: str = "0") -> AsyncIterator[tuple[str, str | verification.Checked]]:
    """(entry id, piece or checked sentence) of an answer being written anywhere, from the start or after `after`."""
    client = _client()
    readers = _readers_key(message.stream_key)
    async with client.pipeline(transaction=True) as pipe:
        # "came": a reader that joins and leaves between two of the writer's looks still counts.
        pipe.incr(readers).expire(readers, KEEP_SECONDS).set(f"{message.stream_key}:came", 1, ex=KEEP_SECONDS)
        await pipe.execute()
    quiet_since = time.monotonic()
    give_up = settings.KB_LLM_TIMEOUT + 30  # nothing at all for this long: its writer is gone
    try:
        while True:
            found = await client.xread({message.stream_key: after}, count=256, block=int(IDLE_CHECK_SECONDS * 1000))
            if not found:
                row = await Message.objects.filter(pk=message.pk).values_list("status", "stream_key").afirst()
                ended = row is None or row != (Message.Status.STREAMING, message.stream_key)
                if ended or time.monotonic() - quiet_since > give_up:
                    return
                continue
            quiet_since = time.monotonic()
            for entry, fields in found[0][1]:
                after = entry.decode()
                if b"end" in fields:
                    return
                if b"t" in fields:
                    yield after, fields[b"t"].decode()
                elif b"s" in fields:
                    yield after, verification.Checked.from_json(json.loads(fields[b"s"]))
    finally:
        await client.decr(readers)


async def _readers(stream_key: str) -> tuple[int, bool]:
    """(readers now, whether any reader ever came)."""
    now, came = await _client().mget(_readers_key(stream_key), f"{stream_key}:came")
    return int(now or 0), bool(came)


@functools.cache
def _sync_client():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2)


async def _write_unattended(message: Message, sources: list[dict], history) -> None:
    """Write an answer nobody reads yet, stopping once its readers have all gone, or none came."""
    started = time.monotonic()
    next_check = started
    async with aclosing(produce(message, sources, history)) as pieces:
        async for _ in pieces:
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + STOP_POLL_SECONDS
            readers, came = await _readers(message.stream_key)
            if readers == 0 and (came or time.monotonic() - started > settings.KB_ANSWER_ATTACH_SECONDS):
                logger.info("message %s: no reader left, generation stops", message.pk)
                break  # closing the answer records it as cut short and closes the model stream


def start_early(user, message: Message) -> bool:
    """From a sync view: begin writing a pending answer now, on this process's event loop. False if it cannot.

    The claim and what the prompt needs are read here, in the view's thread, so that the
    task on the loop goes straight to the model while the view renders its page.
    """
    loop = _loop
    if not settings.KB_ANSWER_EARLY_START or message.status != Message.Status.PENDING:
        return False
    if loop is None or not loop.is_running() or loop.is_closed():
        return False
    try:
        _sync_client().ping()
    except Exception as exc:
        logger.warning("answer relay unavailable, message %s will be written by its page: %s", message.pk, exc)
        return False
    sources, history, claimed = message_answer_start(user=user, message=message)
    if not claimed:
        return False

    def spawn():
        # A fresh context: the request's would tie the task's database calls to the
        # request's own thread, which ends with the response.
        task = loop.create_task(_write_unattended(message, sources, history), context=contextvars.Context())
        _tasks.add(task)
        task.add_done_callback(_finished)

    loop.call_soon_threadsafe(spawn, context=contextvars.Context())
    return True


def _finished(task: asyncio.Task) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("writing an answer failed", exc_info=task.exception())
