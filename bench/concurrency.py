"""Hundreds of people at once: N answer streams against one kb web process (issue 16).

    .venv/bin/python bench/concurrency.py --streams 200 [--path page|api] [--json]

Uses a database of its own (KB_DB_NAME=kb_bench_conc in the embedded Postgres, migrated on the
way): a collection of a few handbook documents, ingested through kb's own services, and N
readers of it (a group's grant). Starts a model-server stand-in (bench/model_standin.py, its
own process: 400 words per answer at 30 a second per stream) and kb's ASGI app under one
uvicorn worker, then N people at once, each on a connection of its own:

- page (default; what a browser does): POST the question to /collections/<id>/ask/ as the
  page's htmx form does (signed in by a session cookie), which starts the answer and returns
  the conversation page; then GET the message's SSE stream (/messages/<id>/stream/), which
  follows the answer through its Redis relay;
- api: POST /api/v1/ask/ with "stream": true and a personal token; the response is the stream.

The stand-in holds every answer's first token until all N streams are connected, so the N
streams overlap from the first token to the last. Measured: time to first byte of each stream
(from sending its request), the tokens each reader receives against what the stand-in sent
(rate ratio per stream: the stand-in's time from first to last token over the time from its
first token leaving to the reader holding the last), the time from the stand-in's last token
to the reader's final state (`done`, once every sentence is checked), errors, the web process's CPU and RSS
(psutil) and its database connections (pg_stat_activity, sampled every 0.2 s).
With --json the last line is {"streams", "rate_ratio", "errors", "ttfb_p95_ms", "db_connections_max"}.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import _harness

_harness.use_database("kb_bench_conc")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from model_standin import answer_words  # noqa: E402

from ingestion.processing import document_process  # noqa: E402
from kb.access import system_user  # noqa: E402
from kb.models import Collection, Conversation, Document, Role  # noqa: E402
from kb.services.collections import collection_create, collection_grant  # noqa: E402
from kb.services.documents import document_upload  # noqa: E402
from kb.services.tokens import api_token_create  # noqa: E402
from tests.helpers import ARTIFACTS, free_port, session_cookies, stop, wait_until  # noqa: E402

COLLECTION, PREFIX, GROUP = "bench: concurrency", "bench-conc-", "bench-conc-readers"
QUESTIONS = ["How long does the restore take?", "When does the nightly backup start?",
             "Who approves an access request?", "What does the incident review need?",
             "How many copies does the backup keep?"]  # fmt: skip


# --- data ---------------------------------------------------------------------------------


def seed(streams: int, tokens: int) -> tuple[int, list[User]]:
    """The collection (ingested once, kept between runs) and `streams` readers without old conversations."""
    collection = Collection.objects.filter(name=COLLECTION).first()
    if collection is None or collection.documents.filter(status=Document.Status.READY).count() < 5:
        if collection is not None:
            collection.delete()
        owner, _ = User.objects.get_or_create(username=f"{PREFIX}owner", defaults={"is_staff": True})
        collection = collection_create(user=owner, name=COLLECTION, description="Operations handbook (bench copy).")
        # The answers' own sentences are in the handbook, among others, so kb finds support for them.
        sentences = " ".join(answer_words(tokens)).replace(" .", ".").split(". ")
        for d in range(5):
            part = sentences[d::5]
            text = f"# Handbook part {d + 1}\n\n" + "\n\n".join(
                f"## {QUESTIONS[(d + k) % 5].rstrip('?')}\n\n{s}. Ask the service desk when in doubt about step {k}."
                for k, s in enumerate(part)
            )
            outcome = document_upload(user=system_user(), collection=collection, file=io.BytesIO(text.encode()),
                                      source_path=f"handbook/part-{d + 1}.md", enqueue=False)  # fmt: skip
            document_process(document_id=outcome.document.pk)
    group, _ = Group.objects.get_or_create(name=GROUP)
    if not collection.grants.filter(group=group).exists():
        collection_grant(actor=system_user(), collection=collection, role=Role.VIEWER, group=group)
    names = [f"{PREFIX}{i:04d}" for i in range(streams + 1)]  # one more for the warm-up
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=n, password="!") for n in names if n not in existing])
    users = list(User.objects.filter(username__in=names).order_by("username"))
    group.user_set.add(*users)
    Conversation.objects.filter(user__in=users).delete()
    return collection.pk, users


def credentials(users: list[User], path: str) -> list[dict]:
    """A signed-in session (page) or a personal token (api) for each reader."""
    if path == "api":
        return [{"token": api_token_create(user=u, name=f"bench {time.time():.0f}")[1]} for u in users]
    csrf = secrets.token_hex(16)  # the cookie and the header must match; the value is ours to pick
    return [{"cookie": f"sessionid={session_cookies(u)['sessionid']}; csrftoken={csrf}", "csrf": csrf} for u in users]


# --- one reader ---------------------------------------------------------------------------


class Reader:
    def __init__(self, n: int, cred: dict):
        self.n, self.cred = n, cred
        self.question = f"{QUESTIONS[n % len(QUESTIONS)]} bench#{n}"
        self.post_ms: float | None = None
        self.ttfb_ms: float | None = None
        self.tokens = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = False
        self.done_at: float | None = None  # when the final state (every sentence checked) arrived
        self.error: str | None = None


TOKEN, DONE = b"event: token\n", b"event: done\n"
WORD = re.compile(rb'[^\s"]+')  # a token's word, in the page's text or the API's JSON string


async def read_stream(reader: Reader, base: str, request: bytes, connected) -> None:
    """Send a raw HTTP request and count the tokens of its response's SSE token events as they arrive.

    Raw asyncio rather than httpx: with hundreds of streams of 30 events a second, parsing
    every line in Python would make this client the bottleneck of what it measures.
    """
    url = urlsplit(base)
    started = time.monotonic()
    try:
        r, w = await asyncio.open_connection(url.hostname, url.port, limit=1 << 20)
    except OSError as exc:
        reader.error = f"connect: {exc}"
        connected(reader)
        return
    try:
        w.write(request)
        await w.drain()
        head = b""
        while b"\r\n\r\n" not in head:
            data = await r.read(65536)
            if not data:
                raise ConnectionError("closed before the response")
            if reader.ttfb_ms is None:
                reader.ttfb_ms = (time.monotonic() - started) * 1000
            head += data
        head, body = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        connected(reader)
        pending = body
        while True:
            # Whole events only (a blank line ends one); chunked framing may sit before an event.
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if (at := event.find(TOKEN)) >= 0:
                    # The stand-in's tokens are words: an event may carry several (kb's relay joins
                    # the pieces of a busy process), so the words are counted, not the events.
                    data = b" ".join(line[6:] for line in event[at:].split(b"\n") if line.startswith(b"data: "))
                    if count := len(WORD.findall(data)):
                        reader.last = time.monotonic()
                        reader.first = reader.first or reader.last
                        reader.tokens += count
                elif DONE in event and not reader.done:
                    reader.done, reader.done_at = True, time.monotonic()
            body = await r.read(65536)
            if not body:
                break
            pending += body
        if not reader.done:
            reader.error = "the stream ended without its done event"
    except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
        reader.error = reader.error or f"{type(exc).__name__}: {exc}"
        connected(reader)
    finally:
        w.close()


async def ask_page(reader: Reader, base: str, web: httpx.AsyncClient, collection: int, connected) -> None:
    """As the page's htmx form asks: POST the question, then follow the stream of the page it returns."""
    headers = {"Cookie": reader.cred["cookie"], "X-CSRFToken": reader.cred["csrf"], "HX-Request": "true"}
    started = time.monotonic()
    try:
        posted = await web.post(f"/collections/{collection}/ask/", data={"question": reader.question}, headers=headers)
    except httpx.HTTPError as exc:
        reader.error = f"POST: {type(exc).__name__}: {exc}"
        connected(reader)
        return
    reader.post_ms = (time.monotonic() - started) * 1000
    found = re.findall(r"/messages/(\d+)/stream/", posted.text)
    if posted.status_code != 200 or not found:
        reader.error = f"POST answered {posted.status_code} {'without a stream' if not found else ''}"
        connected(reader)
        return
    request = (f"GET /messages/{found[-1]}/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
               f"Cookie: {reader.cred['cookie']}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    await read_stream(reader, base, request, connected)


async def ask_api(reader: Reader, base: str, collection: int, connected) -> None:
    """As a script asks: one POST to the JSON API whose response is the stream."""
    body = json.dumps({"question": reader.question, "collections": [collection], "stream": True}).encode()
    request = (f"POST /api/v1/ask/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {reader.cred['token']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               "Connection: close\r\n\r\n").encode()  # fmt: skip
    await read_stream(reader, base, request + body, connected)


async def crowd(readers: list[Reader], base: str, standin: str, path: str, collection: int, timeout: float) -> dict:
    """Everyone asks at once; the stand-in's gate opens when every stream is connected."""
    all_connected = asyncio.Event()
    seen: set[int] = set()

    def connected(reader: Reader) -> None:
        # Connected, or failed on the way: either way not to be waited for.
        seen.add(reader.n)
        if len(seen) == len(readers):
            all_connected.set()

    limits = httpx.Limits(max_connections=len(readers), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as web:
        if path == "page":
            tasks = [asyncio.create_task(ask_page(r, base, web, collection, connected)) for r in readers]
        else:
            tasks = [asyncio.create_task(ask_api(r, base, collection, connected)) for r in readers]
        try:
            await asyncio.wait_for(all_connected.wait(), timeout)
        except TimeoutError:
            pass  # those still connecting will count as errors
        async with httpx.AsyncClient(base_url=standin, timeout=10) as model:
            wanted = sum(r.error is None for r in readers)
            deadline = time.monotonic() + 30
            while len((await model.get("/stats")).json()["records"]) < wanted and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            released = time.monotonic()
            await model.post("/release")
            _, late = await asyncio.wait(tasks, timeout=timeout)
            finished = time.monotonic()
            for task in late:
                task.cancel()
            for r in readers:
                if r.error is None and not r.done:
                    r.error = f"not finished within {timeout:g} s"

            stats = (await model.get("/stats")).json()
    return {"released": released, "finished": finished, "standin": stats}


# --- sampling -----------------------------------------------------------------------------


class Sampler:
    """Every 0.2 s: the web process's CPU time, RSS and threads, and its database connections."""

    def __init__(self, web_pid: int):
        self.proc = psutil.Process(web_pid)
        self.app = f"kb-{web_pid}"  # kb.embedded_db names every connection after its process
        self.rows: list[dict] = []
        self._stop = threading.Event()
        db = settings.DATABASES["default"]
        self.db = psycopg.connect(
            dbname=db["NAME"], user=db["USER"], host=db["HOST"], autocommit=True, application_name="bench-sampler"
        )
        self.max_connections = int(self.db.execute("SHOW max_connections").fetchone()[0])
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self.thread.join()
        self.db.close()

    def _run(self) -> None:
        query = ("SELECT count(*) FILTER (WHERE application_name = %s), count(*) FROM pg_stat_activity "
                 "WHERE datname = %s AND pid <> pg_backend_pid()")  # fmt: skip
        while not self._stop.is_set():
            web, database = self.db.execute(query, (self.app, settings.DATABASES["default"]["NAME"])).fetchone()
            cpu = self.proc.cpu_times()
            self.rows.append({"t": time.monotonic(), "cpu": cpu.user + cpu.system, "rss": self.proc.memory_info().rss,
                              "threads": self.proc.num_threads(), "web_db": web, "db": database})  # fmt: skip
            self._stop.wait(0.2)

    def between(self, start: float, end: float) -> dict:
        rows = [r for r in self.rows if start <= r["t"] <= end] or self.rows[-1:]
        first, last = rows[0], rows[-1]
        wall = max(last["t"] - first["t"], 1e-9)
        return {"cpu_percent": 100 * (last["cpu"] - first["cpu"]) / wall,
                "rss_mb_max": max(r["rss"] for r in rows) / 2**20, "threads_max": max(r["threads"] for r in rows),
                "web_db_max": max(r["web_db"] for r in rows), "db_max": max(r["db"] for r in rows)}  # fmt: skip


# --- the run ------------------------------------------------------------------------------


def start_standin(tokens: int, rate: float, answer: str):
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "bench-standin.log"
    with log.open("wb") as out:
        script = _harness.ROOT / "bench" / "model_standin.py"
        args = ["--port", str(port), "--tokens", str(tokens), "--rate", str(rate), "--answer", answer]
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout=30, what="stand-in",
               proc=proc, log=log)  # fmt: skip
    return proc, url


def summarise(readers: list[Reader], run: dict, sampled: dict, rate: float) -> dict:
    by_tag = {rec["tag"]: rec for rec in run["standin"]["records"]}
    ratios, first_lag, last_lag, done_lag, standin_rates = [], [], [], [], []
    for r in readers:
        rec = by_tag.get(r.n)
        if rec is None or not rec["first"]:
            r.error = r.error or "the model was never asked"
            continue
        if rec["sent"] > 1:
            standin_rates.append((rec["sent"] - 1) / (rec["last"] - rec["first"]))
        if r.error is None and r.tokens != rec["sent"]:
            r.error = f"received {r.tokens} of {rec['sent']} tokens"
        if r.error is None:
            ratios.append((rec["last"] - rec["first"]) / (r.last - rec["first"]))
            first_lag.append((r.first - rec["first"]) * 1000)
            last_lag.append((r.last - rec["last"]) * 1000)
            done_lag.append((r.done_at - rec["last"]) * 1000)
    ttfb = [r.ttfb_ms for r in readers if r.ttfb_ms is not None]
    posts = [r.post_ms for r in readers if r.post_ms is not None]

    def p(values, q):
        return round(_harness.nearest_rank(values, q), 1) if values else None

    return {
        "ttfb_ms": {"p50": p(ttfb, 50), "p95": p(ttfb, 95)},
        "post_ms": {"p50": p(posts, 50), "p95": p(posts, 95)},
        "first_token_lag_ms": {"p50": p(first_lag, 50), "p95": p(first_lag, 95)},
        "last_token_lag_ms": {"p50": p(last_lag, 50), "p95": p(last_lag, 95)},
        "done_lag_ms": {"p50": p(done_lag, 50), "p95": p(done_lag, 95)},
        "rate_ratio": round(statistics.fmean(ratios), 4) if ratios else 0.0,
        "rate_ratio_worst": round(min(ratios), 4) if ratios else 0.0,
        "standin_rate": round(statistics.fmean(standin_rates), 2) if standin_rates else 0.0,
        "standin_rate_nominal": rate,
        "standin_cpu_s": run["standin"]["cpu_s"],
        "errors": sum(r.error is not None for r in readers),
        "error_kinds": sorted({r.error for r in readers if r.error})[:5],
        "stream_s": round(run["finished"] - run["released"], 2),
        **sampled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--path", choices=["page", "api"], default="page", help="the browser's path or the JSON API's")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=30.0, help="tokens per second per stream")
    parser.add_argument(
        "--answer",
        choices=["prose", "words"],
        default="prose",
        help="the stand-in's answer: prose (kb checks each sentence as it ends, as for a real "
        "answer) or words (no full stop until the end: the streaming path alone)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for connecting, then for streaming")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    args = parser.parse_args()
    if args.streams < 1 or args.tokens < 2 or args.rate <= 0:
        parser.error("--streams must be at least 1, --tokens at least 2, --rate positive")

    call_command("migrate", verbosity=0)
    collection, users = seed(args.streams, args.tokens)
    creds = credentials(users, args.path)
    connection.close()  # this process holds no connection during the run: all counted are the web's
    load_start = psutil.getloadavg()[0]
    standin_proc, standin = start_standin(args.tokens, args.rate, args.answer)
    # The stand-in holds first tokens until every stream is connected: the model client must wait that long.
    # Each stream asks as a user of its own, but the warm-up reader asks twice: lift the per-user limits
    # (docs/security.md) so that only kb's capacity is measured.
    env = {"KB_LLM_URL": standin, "KB_LLM_TIMEOUT": str(args.timeout + 60),
           "KB_MAX_STREAMS_PER_USER": str(args.streams + 1), "KB_ASK_PER_MINUTE": str(10 * args.streams)}
    try:
        with _harness.web_server("bench-conc-web", env) as (base, web_pid):
            # Warm-up: the first question loads the embedding models into the web process.
            httpx.post(f"{standin}/release").raise_for_status()
            warm = Reader(args.streams, creds[-1])
            asyncio.run(crowd([warm], base, standin, args.path, collection, args.timeout))
            if warm.error or not warm.done:
                sys.exit(f"concurrency: the warm-up question failed: {warm.error}")
            httpx.post(f"{standin}/reset").raise_for_status()
            readers = [Reader(n, creds[n]) for n in range(args.streams)]
            with Sampler(web_pid) as sampler:
                started, cpu_start = time.monotonic(), time.process_time()
                run = asyncio.run(crowd(readers, base, standin, args.path, collection, args.timeout))
                client_cpu = time.process_time() - cpu_start
                time.sleep(0.3)
            whole = sampler.between(started, run["finished"])
            streaming = sampler.between(run["released"], run["finished"])
            max_connections = sampler.max_connections
    finally:
        stop(standin_proc)
    sampled = {"web_cpu_percent_streaming": round(streaming["cpu_percent"], 1),
               "web_cpu_percent_whole": round(whole["cpu_percent"], 1),
               "web_rss_mb_max": round(whole["rss_mb_max"], 1), "web_threads_max": whole["threads_max"],
               "db_connections_max": whole["db_max"], "web_db_connections_max": whole["web_db_max"],
               "postgres_max_connections": max_connections, "client_cpu_s": round(client_cpu, 2)}  # fmt: skip
    result = summarise(readers, run, sampled, args.rate)

    print(f"{_harness.cpu_name()}; load average {load_start:.1f} at the start, {psutil.getloadavg()[0]:.1f} at the end")
    print(f"{args.streams} streams, path {args.path}, answer {args.answer}, {args.tokens} tokens at {args.rate:g}/s "
          "per stream; "
          f"all streamed in {result['stream_s']} s after the gate opened")  # fmt: skip
    rows = [
        ("time to first byte of the stream p50 / p95", f"{result['ttfb_ms']['p50']} / {result['ttfb_ms']['p95']} ms"),
        ("POST of the question p50 / p95 (page path)", f"{result['post_ms']['p50']} / {result['post_ms']['p95']} ms"),
        ("first token, stand-in → reader p50 / p95",
         f"{result['first_token_lag_ms']['p50']} / {result['first_token_lag_ms']['p95']} ms"),
        ("last token, stand-in → reader p50 / p95",
         f"{result['last_token_lag_ms']['p50']} / {result['last_token_lag_ms']['p95']} ms"),
        ("final state (all checked), after stand-in's last token p50 / p95",
         f"{result['done_lag_ms']['p50']} / {result['done_lag_ms']['p95']} ms"),
        ("delivered token rate / stand-in's (mean, worst stream)",
         f"{result['rate_ratio']:.3f}, {result['rate_ratio_worst']:.3f}"),
        ("stand-in's own rate per stream", f"{result['standin_rate']} tokens/s (nominal {args.rate:g}), "
                                           f"{result['standin_cpu_s']:.1f} CPU s in all"),
        ("errors", f"{result['errors']} {'; '.join(result['error_kinds'])}"),
        ("web process CPU while streaming / whole run", f"{result['web_cpu_percent_streaming']} / "
                                                       f"{result['web_cpu_percent_whole']} % of one core"),
        ("web process RSS max, threads max", f"{result['web_rss_mb_max']} MB, {result['web_threads_max']}"),
        ("database connections max (web process / whole database)",
         f"{result['web_db_connections_max']} / {result['db_connections_max']} "
         f"(max_connections {max_connections})"),
        ("bench client CPU", f"{result['client_cpu_s']} s"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"  {label:58} {value}")
    if args.json:
        keys = ("streams", "rate_ratio", "errors", "ttfb_p95_ms", "db_connections_max")
        values = (args.streams, result["rate_ratio"], result["errors"], result["ttfb_ms"]["p95"],
                  result["db_connections_max"])  # fmt: skip
        print(json.dumps({"detail": result}))
        print(json.dumps(dict(zip(keys, values, strict=True))))


if __name__ == "__main__":
    main()
