"""Logging filters of kb (wired in kb.settings.LOGGING; imports nothing that needs the app registry)."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError


class DatabaseDownFilter:
    """Logging filter: a request refused because the database is unreachable is one line, not a traceback.

    The operator needs to know that, and since when, not a stack of psycopg frames per request.
    """

    def filter(self, record) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OperationalError | InterfaceError):
            reason = str(record.exc_info[1]).strip().splitlines()[0] if str(record.exc_info[1]).strip() else ""
            record.msg = f"{record.getMessage()} (database unreachable: {reason})"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelname = "WARNING"
            record.levelno = 30
        return True
