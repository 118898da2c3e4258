"""What kb's commands share: who they act as and which collections they name."""

from __future__ import annotations

from contextlib import aclosing

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.http import Http404
from tqdm import tqdm

from ingestion.processing import documents_process
from kb import access, selectors
from kb.models import Document, Message, UploadBatch
from kb.services.conversations import message_answer, message_answer_start


def actor_and_collections(*, username: str | None, names: list[str]):
    """The user a command acts as (--user, else the operator) and the named collections they may read."""
    if username:
        actor = get_user_model().objects.filter(username=username, is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user named {username!r}.")
    else:
        actor = access.system_user()
    try:
        collections = [selectors.collection_get_by_name(user=actor, name=name) for name in names]
    except Http404 as exc:
        raise CommandError(str(exc)) from None
    return actor, collections


def process_inline(*, user, batch: UploadBatch, quiet: bool) -> None:
    """Process the batch's queued documents here, without Celery (kb_ingest --inline, kb_source sync)."""
    documents = selectors.batch_document_list(user=user, batch=batch)
    pending = list(documents.filter(status=Document.Status.QUEUED).values_list("pk", flat=True))
    bar = tqdm(total=len(pending), desc="indexing", unit="doc", disable=quiet)
    size = max(1, settings.KB_INGEST_GROUP)  # documents embedded in one pass
    for first in range(0, len(pending), size):
        group = pending[first : first + size]
        documents_process(document_ids=group)
        bar.update(len(group))
    bar.close()


def answer_message(actor, message: Message, show) -> None:
    """Write a pending message's answer through the conversation services, calling show(piece) for each piece.

    async_to_sync: the services' database calls run back on this thread, in its connection
    (and a test's transaction).
    """
    async_to_sync(_answer)(actor, message, show)
    message.refresh_from_db()


async def _answer(actor, message: Message, show) -> None:
    sources, history, claimed = await sync_to_async(message_answer_start)(user=actor, message=message)
    if not claimed:
        return
    async with aclosing(message_answer(message=message, sources=sources, history=history)) as pieces:
        async for piece in pieces:
            show(piece)
