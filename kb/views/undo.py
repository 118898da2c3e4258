"""The "Undo" offered after a delete: what went, and a button that restores it.

Kept in the session until the next page that shows it (the collection page after a document
delete, the home page after a collection delete), like a flash message, but carrying the
restore URL for the button, which a message's text cannot.
"""

from __future__ import annotations

from django.http import HttpRequest

SESSION_KEY = "kb_undo"


def offer_undo(request: HttpRequest, *, text: str, url: str) -> None:
    request.session[SESSION_KEY] = {"text": text, "url": url}


def take_undo(request: HttpRequest) -> dict | None:
    """The undo offered by the last delete, once: a reload no longer shows it."""
    return request.session.pop(SESSION_KEY, None)
