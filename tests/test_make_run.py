"""`make run` stays up when the model server goes away, and its first start ends on one clear line
(issue 15). Real processes throughout, each wait bounded.

The whole of `make run` is not started here: it would share this machine's var/ database, its
fixed Redis and model server ports with whoever else runs kb, and take minutes on two cores.
Instead the parts are run for real: bin/supervise.py around the real llama.cpp server; honcho on
the Procfile's own web and llm lines (the llm line through `make llm-supervised`, as make run
does); bin/ready.py against the real web app; and kb_bootstrap's hand-over of the password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tests.conftest import gguf_path
from tests.helpers import BIN, ROOT, _server_env, answers, free_port, running, wait_until

pytestmark = pytest.mark.django_db
PYTHON = sys.executable


def _llama_cmd(port: int) -> list[str]:
    return [PYTHON, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]  # fmt: skip


def _no_host_port(env: dict) -> dict:
    # llama_cpp.server lets HOST and PORT in the environment override --host and --port.
    return {k: v for k, v in env.items() if k not in ("HOST", "PORT")}


@contextmanager
def _process(cmd: list[str], out: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run cmd in a session of its own, output to `out`; whatever is left is killed at the end."""
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_for(pattern: str, out: Path, *, timeout: float, after: int = 0) -> re.Match:
    """The first match of `pattern` in `out` past character `after`, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.compile(pattern).search(out.read_text(errors="replace"), after)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not written within {timeout:g} s:\n{out.read_text(errors='replace')[-3000:]}")


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- bin/supervise.py -----------------------------------------------------------------------


def test_the_supervisor_restarts_a_llama_cpp_server_killed_with_sigkill(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log, out = tmp_path / "llm.log", tmp_path / "supervise.out"
    cmd = [PYTHON, "bin/supervise.py", "--name", "model server", "--log", str(log), "--", *_llama_cmd(port)]
    with _process(cmd, out, env=_no_host_port(dict(os.environ))) as supervisor:
        first = int(_wait_for(r"started the model server \(pid (\d+)\)", out, timeout=20).group(1))
        wait_until(lambda: _up(f"{url}/v1/models"), timeout=120, what="llama.cpp server", proc=supervisor, log=out)
        # Quiet: llama.cpp's own output went to the log file, not to the terminal.
        assert len(out.read_text().splitlines()) == 1
        assert "llama" in log.read_text(errors="replace")

        os.kill(first, signal.SIGKILL)
        _wait_for(r"the model server was killed by SIGKILL after \d+ s; starting it again in 1 s \(1 exit in the last "
                  r"10 minutes; its log: .*llm\.log\)", out, timeout=20)  # fmt: skip
        second = int(_wait_for(r"restarted the model server \(pid (\d+)\), restart 1", out, timeout=20).group(1))
        assert second != first
        wait_until(lambda: _up(f"{url}/v1/models"), timeout=120, what="restarted server", proc=supervisor, log=out)
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})  # fmt: skip
        assert reply.status_code == 200 and reply.json()["choices"]

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
        assert _gone(second)
        assert not _up(f"{url}/v1/models")
        assert out.read_text().rstrip().endswith("stopped the model server")


def test_the_supervisor_waits_longer_after_each_quick_exit_and_shows_why(tmp_path):
    log, out = tmp_path / "child.log", tmp_path / "supervise.out"
    child = [PYTHON, "-c", "import sys; print('cannot listen: address already in use'); sys.exit(3)"]
    cmd = [PYTHON, "bin/supervise.py", "--name", "model server", "--log", str(log),
           "--min-delay", "0.2", "--max-delay", "0.8", "--", *child]  # fmt: skip
    with _process(cmd, out) as supervisor:
        _wait_for(r"restart 4\b", out, timeout=20)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
    text = out.read_text()
    delays = re.findall(r"exited with status 3 after \d+ s; starting it again in ([\d.]+) s \((\d+) exits?", text)
    assert delays[:4] == [("0.2", "1"), ("0.4", "2"), ("0.8", "3"), ("0.8", "4")]
    assert "  | cannot listen: address already in use" in text  # the reason, from the child's log
    assert log.read_text().count("cannot listen") >= 4


# --- the Procfile under honcho --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_under_honcho_a_killed_model_server_comes_back_and_the_web_app_stays_up(tmp_path):
    web_port, llm_port = free_port(), free_port()
    web, llm = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{llm_port}"
    # The Procfile's llm line runs `make llm-supervised`; MAKEFLAGS gives that make its port and log.
    env = _no_host_port(_server_env({"KB_PORT": str(web_port),
                                     "MAKEFLAGS": f"LLM_PORT={llm_port} LLM_LOG={tmp_path / 'llm.log'}"}))  # fmt: skip
    env.pop("KB_LLM_URL")  # set, it would mean an external model server and no local one
    out = tmp_path / "honcho.out"
    with _process([str(BIN / "honcho"), "-f", "Procfile", "start", "web", "llm"], out, env=env) as honcho:
        pid = int(_wait_for(r"llm\.1\s+\| started the model server \(pid (\d+)\)", out, timeout=60).group(1))
        wait_until(lambda: _up(f"{web}/login/") and _up(f"{llm}/v1/models"), timeout=120, what="web and llm",
                   proc=honcho, log=out)  # fmt: skip

        os.kill(pid, signal.SIGKILL)
        _wait_for(r"llm\.1\s+\| the model server was killed by SIGKILL", out, timeout=20)
        _wait_for(r"llm\.1\s+\| restarted the model server \(pid \d+\)", out, timeout=20)
        assert honcho.poll() is None
        assert _up(f"{web}/login/")  # the site stayed up meanwhile
        wait_until(lambda: _up(f"{llm}/v1/models"), timeout=120, what="restarted llm", proc=honcho, log=out)
        assert _up(f"{web}/login/")
        assert "stopped (rc=" not in out.read_text()  # honcho stopped nothing

        honcho.send_signal(signal.SIGINT)  # Ctrl-C
        honcho.wait(30)
        assert not _up(f"{llm}/v1/models") and not _up(f"{web}/login/")


# --- the first start: kb_bootstrap keeps the password, bin/ready.py prints it -------------------


def _bootstrap(*args: str) -> str:
    out = StringIO()
    call_command("kb_bootstrap", *args, stdout=out)
    return out.getvalue()


def test_bootstrap_keeps_the_new_password_for_later_instead_of_printing_it(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    said = _bootstrap("--defer-password")
    login_file = tmp_path / "first-admin-login.json"
    login = json.loads(login_file.read_text())
    assert login["username"] == "admin" and not login["announced"]
    assert login["password"] not in said and "shown once kb is ready" in said
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(login["password"])

    assert _bootstrap("--defer-password") == ""  # the admin exists: nothing new, the file stays
    assert login_file.exists()
    admin.set_password("changed-by-the-admin-1")
    admin.save()
    _bootstrap("--defer-password")
    assert not login_file.exists()  # changed: the first password is not kept any longer


def test_bootstrap_without_the_option_still_prints_the_password_once(settings, tmp_path):
    settings.VAR_DIR = tmp_path  # docker compose's migrate service reads it from its log
    said = _bootstrap()
    assert "Sign in as 'admin' with password " in said
    assert not (tmp_path / "first-admin-login.json").exists()


@pytest.mark.django_db(transaction=True)
def test_ready_prints_the_address_and_password_once_the_web_app_answers_and_only_the_address_later(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    _bootstrap("--defer-password")
    password = json.loads((tmp_path / "first-admin-login.json").read_text())["password"]
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    ready = [PYTHON, "bin/ready.py", "--url", base, "--login-file", str(tmp_path / "first-admin-login.json")]
    out, again = tmp_path / "ready.out", tmp_path / "ready-again.out"
    with _process(ready, out) as announcer:
        time.sleep(3)
        assert out.read_text() == ""  # nothing while the web app does not answer
        web = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        with running("web-ready", web, ready=answers(f"{base}login/"), env=_server_env()):
            line = _wait_for(r"kb is ready: .*", out, timeout=20).group(0)
            assert line == f"kb is ready: {base}  user admin, password {password}"
            assert announcer.poll() is None  # stays, or honcho would stop everything
            with _process(ready, again) as second:
                assert _wait_for(r"kb is ready: .*", again, timeout=20).group(0) == f"kb is ready: {base}"
                assert password not in again.read_text()
                second.send_signal(signal.SIGTERM)
                assert second.wait(5) == 0
    login_file = tmp_path / "first-admin-login.json"
    assert json.loads(login_file.read_text())["announced"] is True
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
