"""What kb's benchmarks share: a database of their own, the CPU's name, nearest-rank percentiles,
and kb's web server started as in production (uvicorn, kb.asgi, one worker).

Import it first, from a script in bench/ (run from the repository root, which it puts on the path):

    import _harness
    _harness.use_database("kb_bench_conc")   # before django.setup()
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def use_database(name: str) -> None:
    """Point this process (and the servers it starts) at its own database in the embedded Postgres.

    Whatever the shell says: a benchmark must never fill, nor empty, the database someone works in.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    os.environ["KB_DB_NAME"] = name
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_name() -> str:
    """The CPU's model name and the cores this process may use, as /proc/cpuinfo gives them."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"


def nearest_rank(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank (of 20 values, p95 is the 19th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@contextmanager
def web_server(name: str = "bench-web", env: dict | None = None) -> Iterator[tuple[str, int]]:
    """kb's ASGI app under one uvicorn worker on this process's database: yields (base URL, its pid).

    Call after django.setup(). Its log is tests/artifacts/NAME.log; it is stopped on any exit.
    """
    from tests.helpers import BIN, _server_env, answers, free_port, running

    base = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1],
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    with running(name, cmd, ready=answers(f"{base}/login/"), env=_server_env(env)) as proc:
        yield base, proc.pid
