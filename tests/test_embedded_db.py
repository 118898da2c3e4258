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
