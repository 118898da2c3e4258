"""A time limit on reading one file, so a pathological file cannot hold a worker for an hour.

Celery's task limits (KB_TASK_TIME_LIMIT, an hour by default) bound a whole task, a group
of an archive's pages included, and `kb_ingest --inline` runs under none; reading is the
step whose cost a crafted or damaged file controls (pypdf walking a looping page tree,
millions of tiny XML elements), so it gets a bound of its own, KB_READ_TIMEOUT seconds.

An interval timer (SIGALRM) rather than a child process: readers run inside a Celery
prefork child holding the embedding model and database connections, which a fork per
document would copy for every file. The alarm interrupts Python code only, which is where
the parsers spend their time (pypdf is pure Python; lxml returns to Python between
elements). Where no alarm can be set (a thread other than the main one, or a caller that
already armed one, such as a test runner's timeout) the read runs unbounded here and
Celery's limits still apply.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ingestion.errors import IngestError

DEFAULT_SECONDS = 300.0


class _OutOfTime(BaseException):
    """Raised by the alarm. A BaseException: the parsers' own `except Exception` must not swallow it."""


def read_timeout() -> float:
    """KB_READ_TIMEOUT from Django's settings when they are configured, else the default."""
    try:
        from django.conf import settings

        return float(getattr(settings, "KB_READ_TIMEOUT", DEFAULT_SECONDS))
    except Exception:  # noqa: BLE001 - ImproperlyConfigured outside Django (a script reading files)
        return DEFAULT_SECONDS


def too_slow_reason(seconds: float) -> str:
    return (
        f"Reading the file took longer than {seconds:g} seconds (KB_READ_TIMEOUT) and was stopped; it may be "
        "damaged, or too large and complex to read. Save or export it again (or split it), then upload it again."
    )


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise IngestError (too_slow_reason) if the block runs longer than `seconds`; None or 0: no limit."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # someone else's alarm: never overwrite it
        yield
        return
    armed = True

    def on_alarm(signum, frame) -> None:
        if armed:
            raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, on_alarm)
    out_of_time = False
    try:
        try:
            # Then every second: should a parser catch BaseException once, the next alarm still stops it.
            signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
            yield
        finally:
            armed = False
    except _OutOfTime:  # from the block, or from an alarm that landed just before `armed = False`
        armed = False
        out_of_time = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
    if out_of_time:
        raise IngestError(too_slow_reason(seconds))
