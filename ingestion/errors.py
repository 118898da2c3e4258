"""Errors raised while turning a file into chunks and vectors."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError


class IngestError(Exception):
    """A problem with the input a person can act on; str(exc) is that reason, e.g. 'The PDF is encrypted.'"""


class EmbedderUnavailable(Exception):
    """The embedding server did not answer, or refused the request; str(exc) says which (HTTP status included)."""


# Worth retrying (Celery does, with backoff): the database or the embedding server briefly away.
TRANSIENT = (OperationalError, InterfaceError, EmbedderUnavailable)
