"""The embedded Postgres helper copes with a server that another process is starting."""

import os
import threading
import time

from kb.embedded_db import _is_running

FULL = "{pid}\n{pgdata}\n1795929479\n5432\n{pgdata}\n\n  2146584     32769\nready   \n"


def test_a_half_written_pid_file_is_waited_for_not_a_crash(tmp_path):
    pidfile = tmp_path / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{tmp_path}\n")  # a starting server has written two lines

    def finish():
        time.sleep(0.3)
        pidfile.write_text(FULL.format(pid=os.getpid(), pgdata=tmp_path))

    threading.Thread(target=finish).start()
    assert _is_running(tmp_path) is True


def test_no_pid_file_means_not_running(tmp_path):
    assert _is_running(tmp_path) is False
    assert _is_running(tmp_path / "missing") is False


# A process of its own using the embedded server in a given folder, as a management command
# would: it starts or attaches, holds a connection, runs "query" lines, exits on any other.
CLIENT = r"""
import sys
from pathlib import Path

import psycopg

from kb.embedded_db import database_config

config = database_config(Path(sys.argv[1]), name="kb")
connection = psycopg.connect(dbname=config["NAME"], user=config["USER"], host=config["HOST"],
                             application_name=config["OPTIONS"]["application_name"], autocommit=True)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "query":
        break
    print(connection.execute("SELECT 42").fetchone()[0], flush=True)
"""


def _client(data_dir):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(data_dir)], cwd=root, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _leave(proc) -> None:
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_the_process_that_started_the_server_stops_it_when_nobody_else_uses_it(tmp_path):
    data_dir = tmp_path / "pgdata"
    first = _client(data_dir)
    assert _is_running(data_dir)
    _leave(first)
    assert not _is_running(data_dir)


def test_a_second_command_keeps_its_server_when_the_one_that_started_it_finishes_first(tmp_path):
    from kb.embedded_db import stop

    data_dir = tmp_path / "pgdata"
    first = _client(data_dir)  # starts the server
    second = _client(data_dir)  # attaches to it
    try:
        _leave(first)
        assert _is_running(data_dir), "the server was stopped under a process still using it"
        second.stdin.write("query\n")
        second.stdin.flush()
        assert second.stdout.readline().strip() == "42"
        _leave(second)
    finally:
        stop(data_dir)
