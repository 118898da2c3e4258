"""Redis and Postgres restarted under kb (issue 17): no upload lost, the web stays up, requests
fail cleanly while a service is down and succeed after, without restarting kb.

Each test runs its own Redis or Postgres (loopback only) so that stopping it disturbs nothing
else; kb's processes are the real web server and Celery worker. Figures go to
tests/artifacts/faults/ for docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.urls import reverse

from kb.models import Document, Message
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS, wiki_pages
from tests.factories import add_document, make_collection, make_user
from tests.helpers import (
    ARTIFACTS,
    BIN,
    ROOT,
    _server_env,
    celery_beat,
    celery_worker,
    free_port,
    kb_web_server,
    record_fault,
    session_cookies,
    stop,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.django_db(transaction=True)


class RedisServer:
    """A Redis of this test alone, which it stops and starts again; nothing kept on disk, as kb's default."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with (ARTIFACTS / "redis-fault.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._answers, timeout=20, what="redis")

    def _answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _editor_token(collection) -> str:
    editor = make_user()
    collection.grants.create(user=editor, role="editor")
    return api_token_create(user=editor, name="faults")[1]


def _upload(web: str, token: str, collection, name: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{web}/api/v1/collections/{collection.pk}/documents/", headers={"Authorization": f"Bearer {token}"},
        files={"files": (name, text.encode(), "text/markdown")}, timeout=60,
    )  # fmt: skip


def test_redis_restarted_while_uploads_wait_and_while_tasks_run_loses_no_upload(redis_server, tmp_path):
    pages = list(wiki_pages(12).items())
    collection = make_collection()
    token = _editor_token(collection)
    env = {"REDIS_URL": redis_server.url, "KB_QUEUED_LOST_SECONDS": "3", "KB_STALE_SECONDS": "4",
           "KB_HEARTBEAT_SECONDS": "1", "KB_STALE_SWEEP_SECONDS": "1"}  # fmt: skip
    statuses = Counter()
    with kb_web_server(env) as web:
        # 1. Queued, no worker yet; Redis restarts and forgets the messages.
        for name, text in pages[:4]:
            statuses[_upload(web, token, collection, name, text).status_code] += 1
        redis_server.stop()
        # 2. Uploaded while Redis is down: kept and reported queued, not refused.
        for name, text in pages[4:8]:
            response = _upload(web, token, collection, name, text)
            statuses[response.status_code] += 1
            assert response.json()["documents"][0]["status"] == "queued", response.text
        assert httpx.get(f"{web}/login/", timeout=10).status_code == 200, "the web stays up without Redis"
        redis_server.start()
        with celery_worker(env), celery_beat(tmp_path / "beat-schedule", env):
            wait_until(lambda: Document.objects.filter(collection=collection, status="ready").count() == 8,
                       timeout=120, what="the uploads made around the restart")  # fmt: skip
            # 3. Restarted again while the worker runs a task.
            for name, text in pages[8:]:
                statuses[_upload(web, token, collection, name, text).status_code] += 1
            wait_until(lambda: Document.objects.filter(collection=collection, status="processing").exists(),
                       timeout=60, what="a task to run")  # fmt: skip
            redis_server.stop()
            time.sleep(2)
            redis_server.start()
            wait_until(lambda: Document.objects.filter(collection=collection, status="ready").count() == len(pages),
                       timeout=180, what="every upload after the second restart")  # fmt: skip
    documents = Document.objects.filter(collection=collection)
    per_path = Counter(documents.values_list("source_path", flat=True))
    record_fault("redis_restart_uploads", uploads=len(pages), restarts=2, http_statuses=dict(statuses),
                 ready=documents.filter(status="ready").count(), lost=len(pages) - len(per_path),
                 duplicated=sum(n - 1 for n in per_path.values()),
                 chunks_per_document_max=max(d.chunk_count for d in documents))  # fmt: skip
    assert set(statuses) == {202}
    assert len(per_path) == len(pages) and set(per_path.values()) == {1}
    for document in documents:
        assert document.chunks.count() == document.chunk_count > 0, document.source_path


def test_redis_restarted_while_an_answer_streams_ends_it_with_a_clear_state(redis_server, model_server):
    """The browser's path: the question's POST starts the answer, which is relayed through Redis to the page."""
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    question = "Describe in detail how backups are scheduled and restored, step by step."
    seen: list[str] = []
    with kb_web_server({"REDIS_URL": redis_server.url}) as web:
        client = httpx.Client(base_url=web, cookies=session_cookies(user), timeout=120)
        client.get(reverse("collection_detail", args=[collection.pk])).raise_for_status()
        asked = client.post(reverse("collection_ask", args=[collection.pk]), data={"question": question},
                            headers={"HX-Request": "true", "X-CSRFToken": client.cookies["csrftoken"]})  # fmt: skip
        asked.raise_for_status()
        message = Message.objects.get(conversation__user=user)

        def read() -> None:
            with client.stream("GET", reverse("message_stream", args=[message.pk])) as response:
                seen.extend(line for line in response.iter_lines() if line)

        reader = threading.Thread(target=read)
        reader.start()
        wait_until(lambda: "event: token" in seen, timeout=120, what="the answer to start")
        redis_server.stop()
        time.sleep(1)
        redis_server.start()
        reader.join(150)
        assert not reader.is_alive(), "the stream ended"
        client.close()
    message.refresh_from_db()
    kinds = [line for line in seen if line.startswith("event:")]
    record_fault("redis_restart_stream", final_status=message.status, tokens=kinds.count("event: token"),
                 error=message.error, last_events=kinds[-3:])  # fmt: skip
    assert "event: done" in seen, seen[-6:]
    assert message.status in (Message.Status.COMPLETE, Message.Status.INCOMPLETE, Message.Status.FAILED)
    assert message.status == Message.Status.COMPLETE or message.error, "an unfinished answer says why"
    assert "connection to the reader was closed" not in message.error, "a relay restart is not a reader leaving"


# --- Postgres ---------------------------------------------------------------------------------


@contextmanager
def own_postgres(var_dir: Path):
    """kb's embedded Postgres in a folder of its own, migrated; yields (start, stop) for it."""
    from kb.embedded_db import _server
    from kb.embedded_db import stop as stop_server

    env = _server_env({"KB_VAR_DIR": str(var_dir), "KB_DB_NAME": "kb", "KB_EMBEDDED_DB_KEEP": "1"})
    subprocess.run([str(BIN / "python"), "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env,
                   check=True, timeout=300)  # fmt: skip
    admin = {**env, "KB_ADMIN_PASSWORD": "a-long-test-password-1"}
    subprocess.run([str(BIN / "python"), "manage.py", "kb_bootstrap", "--username", "ops"], cwd=ROOT, check=True,
                   env=admin, timeout=120, capture_output=True)  # fmt: skip
    data_dir = var_dir / "pgdata"
    try:
        # pgserver keeps one handle per folder in a process: start the stopped server through it.
        yield env, (lambda: _server(data_dir).ensure_postgres_running()), (lambda: stop_server(data_dir))
    finally:
        stop_server(data_dir)


def test_postgres_stopped_and_started_under_load_gives_503s_then_serves_again_without_restarting_kb(tmp_path):
    with own_postgres(tmp_path / "var") as (env, start_db, stop_db):
        with kb_web_server({**env, "KB_DB_POOL_TIMEOUT": "10"}) as web:
            client = httpx.Client(base_url=web, timeout=30)
            login = client.get("/login/")
            response = client.post("/login/", data={"username": "ops", "password": "a-long-test-password-1",
                                                    "csrfmiddlewaretoken": login.cookies["csrftoken"]})  # fmt: skip
            assert response.status_code in (200, 302) and "sessionid" in client.cookies
            phase = "up"
            log: list[tuple[str, int, float]] = []
            running_load = threading.Event()
            running_load.set()

            def load() -> None:
                with httpx.Client(base_url=web, cookies=client.cookies, timeout=30) as c:
                    while running_load.is_set():
                        t0 = time.monotonic()
                        try:
                            status = c.get("/").status_code
                        except httpx.HTTPError:
                            status = 0
                        log.append((phase, status, time.monotonic() - t0))
                        time.sleep(0.05)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(2)
            phase = "stopping"
            stop_db()
            phase = "down"
            time.sleep(4)
            down = client.get("/")
            phase = "starting"
            start_db()
            phase = "back"
            wait_until(lambda: client.get("/").status_code == 200, timeout=60, what="kb serving again")
            time.sleep(2)
            running_load.clear()
            for thread in threads:
                thread.join(60)
            web_log = (ARTIFACTS / "web.log").read_text()
    by_phase: dict[str, Counter] = {}
    for name, status, _ in log:
        by_phase.setdefault(name, Counter())[status] += 1
    slowest_down = max((s for name, _, s in log if name == "down"), default=0.0)
    record_fault("postgres_restart", requests=len(log), statuses=by_phase, slowest_while_down_s=round(slowest_down, 2))
    assert down.status_code == 503 and "cannot reach its database" in down.text and down.headers["Retry-After"]
    assert by_phase["up"] == Counter({200: by_phase["up"][200]})
    assert set(by_phase["down"]) == {503}, by_phase
    assert by_phase["back"][200] > 0 and set(by_phase["back"]) <= {200, 503}
    assert 500 not in {status for _, status, _ in log}
    assert slowest_down < 15, "while the database is down a request fails within the pool's timeout (10 s here)"
    assert "database unreachable" in web_log and "Traceback" not in web_log, "one line per refusal for the operator"
