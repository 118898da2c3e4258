"""Server-sent events framing, for the pages' answer stream and the JSON API's alike."""

from __future__ import annotations


def sse_event(event: str, data: str, entry: str | None = None) -> str:
    """One event: its name, an optional id (for Last-Event-ID resumption), each line of data as a data field."""
    entry_line = f"id: {entry}\n" if entry else ""
    return f"event: {event}\n{entry_line}" + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n"
