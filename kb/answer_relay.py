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
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing

from django.conf import settings
from redis.exceptions import RedisError

from kb import verification
from kb.models import Message
from kb.services.conversations import message_answer, message_answer_start, message_state

logger = logging.getLogger(__name__)

# How long a relayed answer stays readable after it ends (a reload or a late second tab).
KEEP_SECONDS = 3600
# How often a reader without news asks the database whether the answer ended elsewhere.
IDLE_CHECK_SECONDS = 1.0
# How often an answer nobody may be reading counts its readers.
READERS_CHECK_SECONDS = 1.0
# Redis connections of one event loop: one carries what all its answers publish, one what they follow.
REDIS_CONNECTIONS = 20

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
        # Its pool waits for a free connection where redis-py's default one (a hundred) refuses:
        # hundreds of readers joining at once each count themselves in (bench/concurrency.py).
        pool = redis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=REDIS_CONNECTIONS,
            timeout=10,
            socket_connect_timeout=1,
            socket_timeout=5,
        )
        client = _clients[loop] = redis.Redis(connection_pool=pool)
    return client


def _readers_key(stream_key: str) -> str:
    return f"{stream_key}:readers"


def _order(entry: str) -> tuple[int, int]:
    first, _, second = entry.partition("-")
    return int(first), int(second or 0)


class _Follower:
    """One reader of one answer in this process: what the shared read brings it, after `after`."""

    def __init__(self, after: str):
        self.after = after
        self.queue: asyncio.Queue = asyncio.Queue()

    def deliver(self, entries: list[tuple[str, dict]]) -> None:
        batch: list[tuple[str, str | verification.Checked]] = []
        ended = False
        for entry, fields in entries:
            if _order(entry) <= _order(self.after):
                continue  # another reader of the same answer is further back
            self.after = entry
            if b"end" in fields:
                ended = True
                break
            if b"t" in fields:
                batch.append((entry, fields[b"t"].decode()))
            elif b"s" in fields:
                batch.append((entry, verification.Checked.from_json(json.loads(fields[b"s"]))))
        if batch or ended:
            self.queue.put_nowait((batch, ended))


class _Relay:
    """One event loop's traffic with Redis, for all its answers: one pipeline carries what they
    all publish, one blocking read brings what they all follow.

    A round trip per piece and a connection per reader were most of a web process's work with
    fifty answers at once, and redis-py's pool refuses a hundred connections at once
    (bench/concurrency.py). Shared, the busier the process, the less relaying costs a piece.
    """

    def __init__(self) -> None:
        self.queued: list[tuple[str, str, dict[str, str]]] = []  # (stream, entry id or "*", fields)
        # Per stream, its last queued entry while that is text: the next text piece joins it.
        self.joinable: dict[str, tuple[str, dict[str, str]]] = {}
        self.queued_sent = asyncio.get_running_loop().create_future()  # done once the queued are in Redis
        self.in_flight: asyncio.Future | None = None  # done once the batch being sent is
        self.sending: asyncio.Task | None = None
        self.broken: set[str] = set()  # streams whose relaying stopped
        self.followers: dict[str, list[_Follower]] = {}
        self.reading: asyncio.Task | None = None
        # Written to when a reader joins, so that the read under way starts again with its stream too.
        self.wake_key, self.woken = f"kb:relay:wake:{uuid.uuid4().hex}", "0"

    def publish(self, stream: str, entry: str, fields: dict[str, str], *, join: bool = False) -> str | None:
        """Queue an entry for `stream`: the id of the entry that carries it, None once relaying to it has stopped.

        With `join`, a text piece that comes while its stream's previous text is still queued
        joins that entry (and its id): the busier the process, the more pieces share an entry,
        so Redis, the shared read and the pages' writes each handle fewer (bench/concurrency.py).
        A process with time to spare sends each piece as it comes. Only for a writer nobody
        reads directly: a page given a joined piece's id could not resume right after it.
        """
        if stream in self.broken:
            return None
        text = fields.keys() == {"t"}
        joinable = self.joinable.get(stream) if join and text else None
        if joinable is not None:
            joinable[1]["t"] += fields["t"]
            return joinable[0]
        self.queued.append((stream, entry, fields))
        if text:
            self.joinable[stream] = (entry, fields)
        else:
            self.joinable.pop(stream, None)
        if self.sending is None or self.sending.done():
            self.sending = asyncio.ensure_future(self._send())
        return entry

    async def sent(self) -> None:
        """Wait until what is queued now is in Redis (or failed)."""
        waiting = self.queued_sent if self.queued else self.in_flight
        if waiting is not None and not waiting.done():
            await asyncio.shield(waiting)

    async def _send(self) -> None:
        while self.queued:
            batch, done = self.queued, self.queued_sent
            self.queued, self.queued_sent = [], asyncio.get_running_loop().create_future()
            self.joinable = {}
            self.in_flight = done
            streams = list(dict.fromkeys(stream for stream, _, _ in batch))
            try:
                async with _client().pipeline(transaction=False) as pipe:
                    for stream, entry, fields in batch:
                        pipe.xadd(stream, fields, id=entry, maxlen=16 if stream == self.wake_key else None)
                    for stream in streams:
                        pipe.expire(stream, KEEP_SECONDS, nx=True)
                    results = await pipe.execute(raise_on_error=False)
                failed = {stream for (stream, _, _), r in zip(batch, results, strict=False) if isinstance(r, Exception)}
            except Exception as exc:  # a broken relay must not cost the readers in front of us their answers
                failed, results = set(streams), [exc]
            for stream in failed - self.broken:
                problem = next(r for r in results if isinstance(r, Exception))
                logger.warning("answer relay %s: Redis failed, relaying stops: %s", stream, problem)
            self.broken |= failed
            done.set_result(None)

    def follow(self, stream: str, after: str) -> _Follower:
        follower = _Follower(after)
        self.followers.setdefault(stream, []).append(follower)
        if self.reading is None or self.reading.done() or self.reading.cancelling():
            self.reading = asyncio.ensure_future(self._read())
        else:
            self.publish(self.wake_key, "*", {"w": "1"})
        return follower

    def unfollow(self, stream: str, follower: _Follower) -> None:
        followers = self.followers.get(stream, [])
        if follower in followers:
            followers.remove(follower)
        if not followers:
            self.followers.pop(stream, None)
        if not self.followers and self.reading is not None:
            self.reading.cancel()  # nobody left to read for: the event loop may close

    async def _read(self) -> None:
        client = _client()
        try:
            while self.followers:
                streams = {self.wake_key: self.woken}
                for stream, followers in self.followers.items():
                    streams[stream] = min((f.after for f in followers), key=_order)
                found = await client.xread(streams, count=256, block=int(IDLE_CHECK_SECONDS * 1000))
                for stream, entries in found or []:
                    stream = stream.decode()
                    entries = [(entry.decode(), fields) for entry, fields in entries]
                    if stream == self.wake_key:
                        self.woken = entries[-1][0]
                    for follower in self.followers.get(stream, []):
                        follower.deliver(entries)
        except Exception as exc:  # every reader learns it, and says where its answer stands
            for followers in self.followers.values():
                for follower in followers:
                    follower.queue.put_nowait(exc)


_relays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _relay() -> _Relay:
    loop = asyncio.get_running_loop()
    relay = _relays.get(loop)
    if relay is None:
        relay = _relays[loop] = _Relay()
    return relay


async def produce(
    message: Message, sources: list[dict], history, *, join: bool = False
) -> AsyncIterator[list[tuple[str | None, str | verification.Checked]]]:
    """Write a claimed message's answer: [(relay entry id, piece or checked sentence)], one at a time, published.

    A stream has one writer, so its entries are numbered 0-1, 0-2, ... here: a piece's id is
    known at once, and the piece is queued for Redis, not waited for. `join`: text pieces may
    share an entry (_Relay.publish), for a writer whose readers all follow the relay.
    """
    relay, stream, count = _relay(), message.stream_key, 0

    def publish(**fields: str) -> str | None:
        nonlocal count
        count += 1
        entry = f"0-{count}"
        return relay.publish(stream, entry, fields, join=join) if stream else None

    try:
        answer = message_answer(message=message, sources=sources, history=history, checked=True)
        async with aclosing(answer) as pieces:
            async for piece in pieces:
                if isinstance(piece, verification.Checked):
                    yield [(publish(s=json.dumps(piece.as_json())), piece)]
                else:
                    yield [(publish(t=piece), piece)]
    finally:
        # Also after a cancellation: readers elsewhere learn that it ended, and how, from the row.
        publish(end="1")
        await relay.sent()


async def follow(message: Message, *, after: str = "0") -> AsyncIterator[list[tuple[str, str | verification.Checked]]]:
    """(entry id, piece or checked sentence) of an answer being written anywhere, from the start or after `after`.

    In batches: all that each read found, which a page sends in one write (a reader that fell
    behind catches up at the cost of one piece).
    """
    client = _client()
    readers = _readers_key(message.stream_key)
    async with client.pipeline(transaction=True) as pipe:
        # "came": a reader that joins and leaves between two of the writer's looks still counts.
        pipe.incr(readers).expire(readers, KEEP_SECONDS).set(f"{message.stream_key}:came", 1, ex=KEEP_SECONDS)
        await pipe.execute()
    relay = _relay()
    follower = relay.follow(message.stream_key, after)
    quiet_since = time.monotonic()
    give_up = settings.KB_LLM_TIMEOUT + 30  # nothing at all for this long: its writer is gone
    try:
        while True:
            try:
                news = await asyncio.wait_for(follower.queue.get(), IDLE_CHECK_SECONDS)
            except TimeoutError:
                news = None
            if news is None:
                row = await message_state(message.pk)
                ended = row is None or row[:2] != (Message.Status.STREAMING, message.stream_key)
                if not ended and time.monotonic() - quiet_since <= give_up:
                    continue
                # The shared read can lag behind a busy process: what Redis holds still comes first.
                start = "-" if follower.after == "0" else f"({follower.after}"
                follower.deliver([(e.decode(), f) for e, f in await client.xrange(message.stream_key, start)])
                follower.queue.put_nowait(([], True))
                continue
            if isinstance(news, BaseException):
                raise news
            quiet_since = time.monotonic()
            batch, ended = news
            if batch:
                yield batch
            if ended:
                return
    finally:
        relay.unfollow(message.stream_key, follower)
        await client.decr(readers)


async def replay(message: Message, *, after: str = "0") -> list[tuple[str, str | verification.Checked]]:
    """(entry id, piece or checked sentence) of an answer that has ended, after `after`, as its relay kept them.

    A page that connects a moment after a fast answer ended (a warm model, a Regenerate), or an
    EventSource that reconnects after the end, gets the pieces a live reader got, then the final
    state. Empty once the relay has expired (KEEP_SECONDS) or cannot be read: the final state alone
    still brings the whole answer.
    """
    follower = _Follower(after)
    start = "-" if after == "0" else f"({after}"
    try:
        entries = await _client().xrange(message.stream_key, start)
    except RedisError as exc:
        logger.warning("message %s: cannot replay its answer, sending its final state: %s", message.pk, exc)
        return []
    follower.deliver([(entry.decode(), fields) for entry, fields in entries])
    return follower.queue.get_nowait()[0] if not follower.queue.empty() else []


async def wait_for_end(message: Message) -> None:
    """Wait until a message's answer is no longer being written, or its writer must be gone; without Redis."""
    give_up = time.monotonic() + settings.KB_LLM_TIMEOUT + 30
    while time.monotonic() < give_up:
        row = await message_state(message.pk)
        if row is None or row[:2] != (Message.Status.STREAMING, message.stream_key):
            return
        await asyncio.sleep(IDLE_CHECK_SECONDS)


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
    # Its readers all follow the relay, each from an entry's id: pieces may share entries.
    async with aclosing(produce(message, sources, history, join=True)) as pieces:
        async for _ in pieces:
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + READERS_CHECK_SECONDS
            try:
                readers, came = await _readers(message.stream_key)
            except RedisError as exc:
                # Readers are counted in Redis; without it, write on (the answer ends within the
                # model's limits) rather than cut short an answer someone may be waiting for.
                logger.warning("message %s: cannot count its readers, writing on: %s", message.pk, exc)
                continue
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
