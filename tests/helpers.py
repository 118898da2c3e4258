"""Shared test helpers: paths, free ports, the real servers the fixtures start, and HTTP, stream,
session and browser sign-in helpers used by several test modules."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from asgiref.sync import async_to_sync
from bs4 import BeautifulSoup
from django.conf import settings as django_settings
from django.test import AsyncClient, Client
from django.urls import reverse
from playwright.sync_api import expect

if TYPE_CHECKING:
    from kb.models import Message

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, *, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} was not ready within {timeout:g} s:\n{tail}")


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its descendants at once, as the OOM killer or a power cut does; how many."""
    import psutil

    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def record_fault(name: str, **figures) -> None:
    """Write a fault test's figures to tests/artifacts/faults/NAME.json (docs/reliability.md quotes them)."""
    import json

    folder = ARTIFACTS / "faults"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")


# --- real servers -------------------------------------------------------------------------


def _server_env(extra: dict | None = None) -> dict:
    from django.db import connection

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kb.settings",
        "KB_DB_NAME": connection.settings_dict["NAME"],
        "KB_MEDIA_ROOT": str(django_settings.MEDIA_ROOT),
        "KB_QUEUE": django_settings.CELERY_TASK_DEFAULT_QUEUE,
        "KB_LLM_URL": django_settings.KB_LLM_URL,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "KB_EMBEDDED_DB_KEEP": "1",  # the test session started the server and stops it
    }
    env.pop("DATABASE_URL", None)
    env.pop("HF_HUB_OFFLINE", None)  # in huggingface_hub 2.x it blocks the model server's client too
    env.update(extra or {})
    return env


@contextmanager
def running(name: str, cmd: list[str], *, ready, env: dict, timeout: float = 90) -> Iterator[subprocess.Popen]:
    """Run a server for the duration of the block, its output in tests/artifacts/NAME.log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready(log), timeout=timeout, what=name, proc=proc, log=log)
        yield proc
    finally:
        stop(proc)


@contextmanager
def celery_worker(env: dict | None = None, *, name: str = "worker") -> Iterator[subprocess.Popen]:
    """A real Celery worker on this test run's queue and database (`env`: more settings)."""
    cmd = [str(BIN / "celery"), "-A", "kb", "worker", "-Q", django_settings.CELERY_TASK_DEFAULT_QUEUE,
           "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
           "--hostname", f"test-{os.urandom(3).hex()}@%h"]  # fmt: skip
    with running(name, cmd, ready=lambda log: b" ready." in log.read_bytes(), env=_server_env(env)) as proc:
        yield proc


@contextmanager
def celery_beat(schedule_file: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Real celery beat, sending the scheduled tasks to this test run's queue."""
    cmd = [str(BIN / "celery"), "-A", "kb", "beat", "--loglevel", "INFO", "--schedule", str(schedule_file)]
    with running("beat", cmd, ready=lambda log: b"beat: Starting" in log.read_bytes(), env=_server_env(env)) as proc:
        yield proc


def answers(url: str):
    return lambda _log: httpx.get(url, timeout=2).status_code == 200


@contextmanager
def kb_web_server(env: dict | None = None) -> Iterator[str]:
    """uvicorn serving kb's ASGI app on this test run's database and settings.KB_LLM_URL (`env`: more settings)."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    with running("web", cmd, ready=answers(f"{url}/login/"), env=_server_env(env)):
        yield url


# --- HTTP, streams and sessions -----------------------------------------------------------


def read_stream(user, message) -> list[tuple[str, str]]:
    """All (event, data) pairs the stream sends for a message."""

    async def run():
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(reverse("message_stream", args=[message.pk]))
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        body = b"".join([part async for part in response.streaming_content]).decode()
        return body

    events = []
    for block in async_to_sync(run)().split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        event = lines[0].removeprefix("event: ")
        data = "\n".join(line.removeprefix("data: ") for line in lines[1:] if line.startswith("data: "))
        events.append((event, data))
    return events


def in_own_thread(function, *args):
    """function(*args) in a thread of its own: asyncio.run and async_to_sync refuse a thread
    with a running event loop, which Playwright's sync API leaves in the main thread once a
    browser test has run (test order then decides whether a test can fail)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


def session_cookies(user) -> dict:
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def wait_for_status(message: Message, *statuses: str, timeout: float = 15) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message.refresh_from_db()
        if message.status in statuses:
            return message
        time.sleep(0.1)
    raise AssertionError(f"message stayed {message.status}")


# --- the browser --------------------------------------------------------------------------

PASSWORD = "a-long-test-password-1"


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator(".topbar .who")).to_have_text(username)


def wait_for_answer(article, *, before_retry=None) -> bool:
    """Wait until the answer in `article` (a conversation's `article.message`) is finished.

    The bundled demo model (SmolLM2-135M) now and then writes nothing at all; kb then says "The
    model server returned an empty answer" beside the passages and offers Regenerate, which is
    what a reader does next: so do that, once (`before_retry` runs first, e.g. to reset what a
    test records). Returns whether it had to.
    """
    regenerate = article.get_by_role("button", name="Regenerate")
    expect(regenerate).to_be_visible(timeout=180_000)
    if article.locator(".answer").count():
        return False
    if before_retry is not None:
        before_retry()
    regenerate.click()
    expect(article.locator(".answer:not(.streaming)")).to_be_visible(timeout=180_000)
    return True


# --- rendered HTML that fetches on its own (issue 17) ----------------------------------------

# Attributes whose URL a browser requests as the element loads or is shown, without a click.
_FETCHING = {"src", "srcset", "poster", "data", "background", "lowsrc", "dynsrc", "ping", "manifest", "codebase",
             "archive", "longdesc", "action", "formaction", "xlink:href", "imagesrcset"}  # fmt: skip
_FETCHING_HREF = {"link", "base", "image", "use", "feimage"}


def _leaves_the_page(url: str) -> bool:
    """True unless `url` is a path on this origin ('/…', '?…', '#…') or a data: URL (no request)."""
    url = url.strip()
    if url.lower().startswith("data:"):
        return False
    return not url or not (url[0] in "?#" or (url[0] == "/" and url[1:2] not in ("/", "\\")))


def external_fetches(html: str) -> list[str]:
    """The elements of `html` that would make a browser request another origin on their own, or run script.

    Links (`<a href>`) are left out: they fetch only when clicked (the callers check them).
    """
    found = []
    for tag in BeautifulSoup(html, "html.parser").find_all(True):
        shown = str(tag)[:160]
        if tag.name == "script" and (tag.string or not tag.get("src", "").startswith("/static/")):
            found.append(shown)
        if tag.name == "style" or tag.name in ("iframe", "frame", "object", "embed", "svg"):
            found.append(shown)
        if tag.name == "meta" and tag.get("http-equiv"):
            found.append(shown)
        for attr, value in tag.attrs.items():
            values = value if isinstance(value, list) else [value]
            name = attr.lower()
            if name.startswith("on") or (name == "style" and "url(" in str(value).lower()):
                found.append(shown)
            elif name in _FETCHING or (name == "href" and tag.name in _FETCHING_HREF):
                if any(_leaves_the_page(str(v)) for v in values):
                    found.append(shown)
            elif name == "href" and any("javascript:" in str(v).lower() for v in values):
                found.append(shown)
    return found


def recount() -> tuple[set, set]:
    """What migration 0011's BM25 statistics should hold, counted from the chunks now."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT collection_id, generation, u.lexeme, count(*) FROM kb_chunk, unnest(search_vector) u "
                       "GROUP BY 1, 2, 3")  # fmt: skip
        terms = set(cursor.fetchall())
        cursor.execute("SELECT collection_id, generation, count(*), sum(kb_tsvector_length(search_vector)), "
                       "count(DISTINCT (document_id, heading_path)) FROM kb_chunk GROUP BY 1, 2")  # fmt: skip
        totals = set(cursor.fetchall())
    return terms, totals


def assert_statistics_match_the_chunks() -> None:
    from kb.models import KeywordTerm, KeywordTotal

    terms, totals = recount()
    assert set(KeywordTerm.objects.values_list("collection_id", "generation", "lexeme", "df")) == terms
    stored = KeywordTotal.objects.values_list("collection_id", "generation", "chunks", "length", "sections")
    assert set(stored) == totals
