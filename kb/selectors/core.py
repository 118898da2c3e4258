"""Reads. Every read of a collection, document, chunk or conversation takes the user
first and is scoped by kb.access; what the user may not see is a 404, never a 403."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, Q
from django.http import Http404
from django.utils import timezone

from kb import access
from kb.models import (
    ApiToken,
    AuditEvent,
    Chunk,
    Collection,
    CollectionGrant,
    Conversation,
    Document,
    Feedback,
    Message,
    Role,
    Source,
    SourceRun,
)
from kb.selectors.documents import _progress, _progress_counts, _readable_documents


def _readable_collections(user):
    return Collection.objects.filter(pk__in=access.readable_collection_ids(user))


def collection_list(*, user):
    return _readable_collections(user)


def collection_list_counted(*, user):
    """The readable collections, each with `documents_ready`: its documents that search and answers use now."""
    ready = Q(documents__status=Document.Status.READY, documents__deleted_at__isnull=True)
    return _readable_collections(user).annotate(documents_ready=Count("documents", filter=ready))


def collection_list_picked(*, user, ids) -> list[Collection]:
    """The readable collections among `ids`; all readable ones when none is picked."""
    readable = _readable_collections(user)
    # isdigit() alone lets "²" through, which int() refuses: only ASCII digits are ids.
    picked = [int(i) for i in ids if str(i).isascii() and str(i).isdigit()]
    return list(readable.filter(pk__in=picked) if picked else readable)


def collection_name_problem(*, name: str, exclude_pk: int | None = None) -> str | None:
    """What is wrong with a collection name, or None: names are unique ignoring case.

    Asked by the services before they write and by the admin's form, so both refuse alike.
    """
    name = name.strip()
    if not name:
        return "A collection needs a name."
    taken = Collection.objects.filter(name__iexact=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    held = taken.only("deleted_at").first()
    if held is not None and held.deleted_at is not None:
        return f"A deleted collection is still named {name!r} until it is purged: restore it, or choose another name."
    return f"A collection named {name!r} already exists." if held else None


def collection_get(*, user, pk: int, minimum: Role = Role.VIEWER) -> Collection:
    """The collection if the user holds at least `minimum` on it, else 404."""
    try:
        return Collection.objects.filter(pk__in=access.collection_ids_with_role(user, minimum)).get(pk=pk)
    except (Collection.DoesNotExist, ValueError, TypeError):
        raise Http404("No such collection.") from None


def collection_get_by_name(*, user, name: str) -> Collection:
    try:
        return _readable_collections(user).get(name=name)
    except Collection.DoesNotExist:
        raise Http404(f"No collection named {name!r} that you can read.") from None


def source_list(*, user, collection: Collection) -> list[Source]:
    """The collection's sources, each with `last_run` (its newest run, or None); two queries."""
    if not access.can_read(user, collection):
        return []
    sources = list(Source.objects.filter(collection=collection).annotate(documents_count=Count("documents")))
    latest: dict[int, SourceRun] = {}
    for run in (
        SourceRun.objects.filter(source__in=sources).order_by("source_id", "-started_at", "-pk").distinct("source_id")
    ):
        latest[run.source_id] = run
    for source in sources:
        source.last_run = latest.get(source.pk)
    return sources


def source_get(*, user, pk: int, minimum: Role = Role.VIEWER) -> Source:
    """The source if the user holds at least `minimum` on its collection, else 404."""
    try:
        return Source.objects.select_related("collection").get(
            pk=pk, collection_id__in=access.collection_ids_with_role(user, minimum)
        )
    except (Source.DoesNotExist, ValueError, TypeError):
        raise Http404("No such source.") from None


def source_runs(*, user, source: Source, limit: int = 10) -> list[SourceRun]:
    """The source's latest runs, newest first (none if the user may not read its collection)."""
    if not access.can_read(user, source.collection):
        return []
    runs = list(source.runs.select_related("batch")[:limit])
    batch_ids = [r.batch_id for r in runs if r.batch_id]
    counts = {
        row.pop("batch"): row
        for row in Document.objects.filter(batch__in=batch_ids).values("batch").annotate(**_progress_counts())
    }
    for run in runs:
        # A run's documents are processed after it ends: its batch's progress, and the pages
        # that failed being fetched (refused) or processed, are what an editor wants to see.
        row = counts.get(run.batch_id)
        run.progress = _progress(row) if row else None
        run.failed = run.summary.get("refused", 0) + (run.progress.failed if run.progress else 0)
    return runs


def source_documents(*, user, source: Source, limit: int = 200):
    """The source's documents, most recently changed at the source first."""
    return (
        _readable_documents(user)
        .filter(source=source)
        .order_by(F("source_modified").desc(nulls_last=True), "source_path")[:limit]
    )


def chunks_readable_by(*, user, collection_ids=None):
    """The chunks the user may read (of `collection_ids`, if given), of each collection's current
    model (never a re-index's staged ones).

    Within a request the readable ids are a list: the asked ones are intersected with it here,
    so the statement filters the collection once. Two filters on collection_id made Postgres
    multiply their selectivities, expect a hundredth of the rows and plan an exact vector
    scan over them (docs/benchmarks.md, "Retrieval at a million chunks").
    """
    readable = access.readable_collection_ids(user)
    chunks = Chunk.objects.live()
    if collection_ids is None:
        return chunks.in_collections(readable)
    if isinstance(readable, list):
        allowed = set(readable)
        return chunks.in_collections([pk for pk in collection_ids if pk in allowed])
    return chunks.in_collections(readable).in_collections(collection_ids)


def collections_by_model(*, user, collection_ids=None) -> dict:
    """The readable collections (among `collection_ids`, if given) grouped by model: {EmbedSpec: [id, ...]}."""
    collections = _readable_collections(user)
    if collection_ids is not None:
        collections = collections.filter(pk__in=list(collection_ids))
    groups: dict = {}
    for collection in collections.only("pk", "embed_model").order_by("pk"):
        groups.setdefault(collection.embed_spec, []).append(collection.pk)
    return groups


def chunk_get(*, user, pk: int) -> Chunk:
    try:
        return chunks_readable_by(user=user).select_related("document", "collection").get(pk=pk)
    except (Chunk.DoesNotExist, ValueError, TypeError):
        raise Http404("No such passage.") from None


def document_chunks(*, user, document: Document) -> list[Chunk]:
    """The document's chunks in order, each with `new_text`: its text less the overlap with the previous one.

    Chunks overlap so that a sentence cut at a boundary still embeds with its context;
    reading the document, each piece of text should appear once.
    """
    chunks = list(chunks_readable_by(user=user).filter(document=document).order_by("ordinal"))
    previous_end = None
    for chunk in chunks:
        chunk.new_text = chunk.text
        if previous_end is not None and chunk.start_char is not None and previous_end > chunk.start_char:
            chunk.new_text = chunk.text[previous_end - chunk.start_char :]
        previous_end = chunk.end_char
    return chunks


def conversation_list(*, user):
    return Conversation.objects.owned_by(user)


def conversation_get(*, user, pk: int) -> Conversation:
    try:
        return Conversation.objects.owned_by(user).get(pk=pk)
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such conversation.") from None


def conversation_collections(*, user, conversation: Conversation):
    """The conversation's collections that the user may still read."""
    return _readable_collections(user).filter(pk__in=conversation.collections.values("pk"))


def message_get(*, user, pk: int) -> Message:
    try:
        return Message.objects.select_related("conversation").get(pk=pk, conversation__in=conversation_list(user=user))
    except (Message.DoesNotExist, ValueError, TypeError):
        raise Http404("No such message.") from None


def message_history(*, user, conversation: Conversation, before: Message | None = None) -> list[Message]:
    """The conversation's last answered turns (oldest first) to carry into a follow-up.

    A turn that drew on a collection the user can no longer read is left out, so a revoked
    grant also ends what earlier answers quoted from it.
    """
    turns = conversation.messages.filter(status__in=[Message.Status.COMPLETE, Message.Status.INCOMPLETE])
    if before is not None:
        turns = turns.filter(created_at__lt=before.created_at)
    readable = set(_readable_collections(user).values_list("pk", flat=True))
    recent = list(turns.order_by("-created_at")[: settings.KB_HISTORY_TURNS])
    return [m for m in reversed(recent) if all(s.get("collection_id") in readable for s in m.sources)]


def feedback_get(*, user, message: Message) -> Feedback | None:
    """The user's own judgement of an answer, if any."""
    return Feedback.objects.filter(message=message, user=user).first() if user.is_authenticated else None


def feedback_by_message(*, user, messages: list[Message]) -> dict[int, Feedback]:
    """The user's own judgements of these answers, by message id: one query for a whole conversation."""
    if not user.is_authenticated:
        return {}
    return {f.message_id: f for f in Feedback.objects.filter(message__in=messages, user=user)}


def message_sources(*, user, message: Message) -> list[dict]:
    """The message's sources that the user may still read (grants can be revoked after asking)."""
    return message_sources_by_message(user=user, messages=[message])[message.pk]


def message_sources_by_message(*, user, messages: list[Message]) -> dict[int, list[dict]]:
    """message_sources for many answers at once (a conversation page): two queries, not two an answer."""
    readable = set(_readable_collections(user).values_list("pk", flat=True))
    kept = {m.pk: [s for s in m.sources if s.get("collection_id") in readable] for m in messages}
    documents = _source_documents([s["document_id"] for sources in kept.values() for s in sources])
    return {pk: with_freshness(sources, documents) for pk, sources in kept.items()}


def _source_documents(ids) -> dict[int, dict]:
    return {
        row.pop("pk"): row
        for row in Document.objects.filter(pk__in=ids).values(
            "pk", "url", "source_modified", "collection__stale_after_days", "deleted_at"
        )
    }


def with_freshness(sources: list[dict], documents: dict[int, dict] | None = None) -> list[dict]:
    """The sources with their documents' address and age now: `url`, `modified`, and `stale` when
    the page has not changed at its source for longer than its collection's stale_after_days.
    `documents`: their rows, when the caller has read them already (_source_documents)."""
    if documents is None:
        documents = _source_documents([s["document_id"] for s in sources])
    now = timezone.now()
    fresh = []
    for source in sources:
        row = documents.get(source["document_id"])
        if row is None:  # purged since: what was stored with the answer
            fresh.append({**source, "stale": False})
            continue
        if row["deleted_at"] is not None:  # deleted: shown nowhere, answers included
            continue
        modified, days = row["source_modified"], row["collection__stale_after_days"]
        stale = bool(modified and days is not None and modified < now - timedelta(days=days))
        url = row["url"] if row["url"].startswith(("https://", "http://")) else ""  # never javascript: and the like
        fresh.append({**source, "url": url, "modified": modified, "stale": stale})
    return fresh


# Access administration -------------------------------------------------------------------


def collection_grants(*, user, collection: Collection):
    """The collection's access list, for those who may manage it (else 404)."""
    if not access.can_manage(user, collection):
        raise Http404("No such collection.")
    return CollectionGrant.objects.filter(collection=collection).select_related("user", "group").order_by("pk")


def grant_get(*, user, collection: Collection, pk: int) -> CollectionGrant:
    try:
        return collection_grants(user=user, collection=collection).get(pk=pk)
    except (CollectionGrant.DoesNotExist, ValueError, TypeError):
        raise Http404("No such grant.") from None


def api_token_list(*, user):
    return ApiToken.objects.filter(user=user) if user.is_authenticated else ApiToken.objects.none()


def api_token_get(*, user, pk: int) -> ApiToken:
    try:
        return api_token_list(user=user).get(pk=pk)
    except (ApiToken.DoesNotExist, ValueError, TypeError):
        raise Http404("No such token.") from None


def api_token_user(*, raw: str):
    """The active owner of an active token, or None."""
    token = (
        ApiToken.objects.select_related("user").filter(digest=ApiToken.digest_of(raw), revoked_at__isnull=True).first()
    )
    if token is None or not token.user.is_active:
        return None
    return token


def audit_list(*, user, collection_id: int | None = None):
    """The audit log, newest first: staff only (else 404)."""
    if not access.can_view_audit(user):
        raise Http404
    events = AuditEvent.objects.select_related("actor")
    if collection_id is not None:
        events = events.filter(collection_id=collection_id)
    return events
