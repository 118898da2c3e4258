"""Writes. Each service validates, then changes the database in one transaction, and
enqueues background work only after that transaction commits."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from ingestion.errors import TRANSIENT
from kb import access, answering, llm, retrieval, selectors
from kb.models import (
    FINISHED,
    GENERATION_SEQUENCE,
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
    UploadBatch,
)

logger = logging.getLogger(__name__)
# Hook for the audit log (issue 4): ingestion events are logged here with who and what.


# Audit -----------------------------------------------------------------------------------


def audit_record(*, actor, action: str, collection: Collection | None = None, target: str = "", **detail) -> AuditEvent:
    """Record who did what to which collection; call it inside the service's transaction."""
    known = actor if getattr(actor, "is_authenticated", False) and getattr(actor, "pk", None) else None
    return AuditEvent.objects.create(
        actor=known,
        actor_name=known.get_username() if known else "",
        action=action,
        collection=collection if collection is not None and collection.pk else None,
        collection_name=collection.name if collection is not None else "",
        target=str(target)[:1000],
        detail=detail,
    )


def _require_manage(actor, collection: Collection) -> None:
    if actor is not None and not access.can_manage(actor, collection):
        raise PermissionError("You cannot manage access to this collection.")


def _principal(user, group) -> str:
    return f"user {user.get_username()}" if user is not None else f"group {group.name}"


# Collections and access ------------------------------------------------------------------


@transaction.atomic
def collection_create(*, user, name: str, description: str = "", open_to_all: bool = False) -> Collection:
    """Create a collection and make its creator its owner."""
    name = name.strip()
    if not name:
        raise ValidationError("A collection needs a name.")
    if Collection.objects.filter(name__iexact=name).exists():
        raise ValidationError(f"A collection named {name!r} already exists.")
    collection = Collection.objects.create(name=name, description=description, created_by=user, open_to_all=open_to_all)
    if user is not None and user.is_authenticated:
        CollectionGrant.objects.create(collection=collection, user=user, role=Role.OWNER)
    access.forget()
    audit_record(actor=user, action="collection.create", collection=collection, target=name)
    return collection


@transaction.atomic
def collection_update(
    *, actor, collection: Collection, name: str, description: str = "", open_to_all: bool = False
) -> Collection:
    """Rename a collection, change its description or whether every signed-in user reads it."""
    _require_manage(actor, collection)
    name = name.strip()
    if not name:
        raise ValidationError("A collection needs a name.")
    if Collection.objects.filter(name__iexact=name).exclude(pk=collection.pk).exists():
        raise ValidationError(f"A collection named {name!r} already exists.")
    changes = {}
    if name != collection.name:
        changes["name"] = [collection.name, name]
    if open_to_all != collection.open_to_all:
        changes["open_to_all"] = [collection.open_to_all, open_to_all]
    collection.name, collection.description, collection.open_to_all = name, description, open_to_all
    collection.save(update_fields=["name", "description", "open_to_all"])
    if changes:
        access.forget()
        audit_record(actor=actor, action="collection.update", collection=collection, target=name, **changes)
    return collection


@transaction.atomic
def collection_delete(*, actor, collection: Collection) -> None:
    """Delete a collection with its documents, chunks and stored files."""
    _require_manage(actor, collection)
    names = list(Document.objects.filter(collection=collection).values_list("file", flat=True))
    audit_record(
        actor=actor, action="collection.delete", collection=collection, target=collection.name, documents=len(names)
    )
    collection.delete()
    access.forget()
    transaction.on_commit(lambda: [default_storage.delete(n) for n in names if n])


@transaction.atomic
def collection_grant(*, collection: Collection, role: Role | str, user=None, group=None, actor=None) -> CollectionGrant:
    """Give a user or a group a role on a collection (replacing their previous role).

    With an `actor`, it must be allowed to manage the collection's access.
    """
    if (user is None) == (group is None):
        raise ValidationError("Grant to exactly one of a user or a group.")
    _require_manage(actor, collection)
    role = Role(role)
    grant, _ = CollectionGrant.objects.update_or_create(
        collection=collection, user=user, group=group, defaults={"role": role}
    )
    access.forget()
    audit_record(actor=actor, action="access.grant", collection=collection, target=_principal(user, group), role=role)
    return grant


@transaction.atomic
def collection_revoke(*, collection: Collection, user=None, group=None, actor=None) -> None:
    """Remove a user's or a group's grant on a collection."""
    _require_manage(actor, collection)
    deleted, _ = CollectionGrant.objects.filter(collection=collection, user=user, group=group).delete()
    if deleted:
        access.forget()
        audit_record(actor=actor, action="access.revoke", collection=collection, target=_principal(user, group))


# API tokens ------------------------------------------------------------------------------

TOKEN_PREFIX = "kb_"


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a personal API token; the raw token is returned here once and never stored."""
    name = name.strip()[:100]
    if not name:
        raise ValidationError("Name the token after what will use it.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], digest=token_digest(raw))
    audit_record(actor=user, action="token.create", target=f"{name} ({token.prefix}…)")
    return token, raw


@transaction.atomic
def api_token_revoke(*, user, token: ApiToken) -> None:
    """Revoke one of the user's tokens; requests with it fail from then on."""
    if token.user_id != user.pk:
        raise PermissionError("Not your token.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=user, action="token.revoke", target=f"{token.name} ({token.prefix}…)")


def api_token_touch(*, token: ApiToken) -> None:
    """Note when a token was last used (at most once a minute, to spare the database)."""
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


# Documents -------------------------------------------------------------------------------


@dataclass
class UploadOutcome:
    document: Document
    outcome: str  # "created" | "updated" | "unchanged"


def _hash_file(file) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
    file.seek(0)
    return digest.hexdigest()


def _clean_source_path(source_path: str) -> str:
    path = PurePosixPath(source_path.replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    if not parts or ".." in parts:
        raise ValidationError(f"Unusable file name {source_path!r}.")
    return "/".join(parts)[:1000]


def _title_from(source_path: str) -> str:
    return PurePosixPath(source_path).stem.replace("_", " ").replace("-", " ").strip() or source_path


def document_upload(
    *,
    user,
    collection: Collection,
    file,
    source_path: str,
    enqueue: bool = True,
    batch: UploadBatch | None = None,
    source_archive: str = "",
) -> UploadOutcome:
    """Store an uploaded file as a document of the collection and queue it for ingestion.

    The same content again (under the same path, or any path of the collection) is
    'unchanged' and costs no work; new content under a known path replaces that
    document's chunks once the new version is processed. With enqueue=False the caller
    processes it (kb_ingest --inline).
    """
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add documents to this collection.")
    source_path = _clean_source_path(source_path)
    size = getattr(file, "size", None)
    if size is None:
        file.seek(0, 2)
        size = file.tell()
        file.seek(0)
    max_bytes = settings.KB_MAX_UPLOAD_MB * 1024 * 1024
    if size > max_bytes:
        raise ValidationError(
            f"{source_path} is {size / 1024 / 1024:.1f} MB; the limit is {settings.KB_MAX_UPLOAD_MB} MB."
        )
    if size == 0:
        raise ValidationError(f"{source_path} is empty.")
    content_hash = _hash_file(file)

    with transaction.atomic():
        existing = Document.objects.select_for_update().filter(collection=collection, source_path=source_path).first()
        redo = (Document.Status.FAILED, Document.Status.CANCELLED)
        if existing and existing.content_hash == content_hash and existing.status not in redo:
            if source_archive and existing.source_archive != source_archive:
                existing.source_archive = source_archive  # now also listed by this archive: synced with it
                existing.save(update_fields=["source_archive"])
            return UploadOutcome(existing, "unchanged")
        if existing is None:
            twin = Document.objects.filter(collection=collection, content_hash=content_hash).first()
            if twin is not None and twin.status not in redo:
                return UploadOutcome(twin, "unchanged")
        suffix = PurePosixPath(source_path).suffix.lower()[:16]
        # Generated names: nothing a user typed becomes a path on disk.
        stored_name = default_storage.save(f"documents/{uuid.uuid4().hex}{suffix}", File(file))
        try:
            document, outcome = _document_store(
                user=user, collection=collection, existing=existing, source_path=source_path,
                content_hash=content_hash, stored_name=stored_name, size=size, batch=batch,
                source_archive=source_archive,
            )  # fmt: skip
        except BaseException:
            default_storage.delete(stored_name)  # the row never pointed at it: leave no orphan
            raise
        audit_record(
            actor=user, action=f"document.{'upload' if outcome == 'created' else 'replace'}",
            collection=collection, target=source_path, document_id=document.pk, size=size,
        )  # fmt: skip
        if enqueue:
            _enqueue_ingest(document)
    return UploadOutcome(document, outcome)


def _document_store(
    *, user, collection, existing, source_path: str, content_hash: str, stored_name: str, size: int,
    batch: UploadBatch | None, source_archive: str,
) -> tuple[Document, str]:  # fmt: skip
    uploader = user if getattr(user, "is_authenticated", False) else None
    if existing is None:
        document = Document.objects.create(
            collection=collection,
            title=_title_from(source_path),
            source_path=source_path,
            content_hash=content_hash,
            file=stored_name,
            size=size,
            uploaded_by=uploader,
            batch=batch,
            source_archive=source_archive,
        )
        return document, "created"
    old_file = existing.file.name
    existing.content_hash = content_hash
    existing.file = stored_name
    existing.size = size
    existing.uploaded_by = uploader
    existing.batch = batch
    existing.attempts = 0
    if source_archive:
        existing.source_archive = source_archive
    _set_status(existing, Document.Status.QUEUED, stage="", done=0, total=0, error="")
    existing.save()
    if old_file and old_file != stored_name:
        transaction.on_commit(lambda: default_storage.delete(old_file))
    return existing, "updated"


def _enqueue_ingest(document: Document) -> None:
    from ingestion.tasks import ingest_document

    ingest_document.delay_on_commit(document.pk)


def _enqueue_ingest_group(document_ids: list[int]) -> None:
    """Queue many documents (an archive's pages) as tasks of up to KB_INGEST_GROUP each.

    Each task embeds its documents' chunks in one pass (documents_process): a wiki export is
    mostly small pages, and one task per page embeds a few chunks at a time in small,
    ragged batches (3.5 × slower on every 20th page of the PostgreSQL manual, docs/benchmarks.md).
    """
    from ingestion.tasks import ingest_documents

    size = max(1, settings.KB_INGEST_GROUP)
    for first in range(0, len(document_ids), size):
        ingest_documents.delay_on_commit(document_ids[first : first + size])


def _set_status(document: Document, status: str, *, stage: str, done: int, total: int, error: str) -> None:
    document.status = status
    document.stage = stage
    document.progress_done = done
    document.progress_total = total
    document.error = error


def document_mark(
    *, document_id: int, status: str, stage: str = "", done: int = 0, total: int = 0, error: str = ""
) -> bool:
    """Record a document's state and progress (used by the worker while it runs); False if it was cancelled.

    Each mark also refreshes updated_at, the heartbeat that stale-job detection reads.
    """
    return bool(
        Document.objects.filter(pk=document_id)
        .exclude(status=Document.Status.CANCELLED)
        .update(
            status=status,
            stage=stage,
            progress_done=done,
            progress_total=total,
            error=error,
            updated_at=timezone.now(),
        )  # fmt: skip
    )


class DocumentCancelled(Exception):
    """The document's batch was cancelled while the worker processed it."""


class ModelChanged(Exception):
    """The collection switched to another model while a document was embedded with the old one."""


def document_process(*, document_id: int, reindex: bool = False) -> None:
    """Parse, chunk, embed and store one document; idempotent, safe to run twice.

    A document is embedded with its collection's model. reindex=True embeds a document
    already in use again with the model of the collection's running re-index
    (collection_reindex), into staged chunks that search ignores until the whole
    collection switches over; the last document to finish makes the switch.
    """
    for _attempt in range(3):
        prepared = _document_prepare(document_id=document_id, reindex=reindex)
        try:
            if prepared is not None:
                _document_embed_and_store(prepared)
        except ModelChanged:
            # Re-indexing finished while this version was embedded with the model before:
            # embed it again, with the collection's model now.
            logger.info("document %s: its collection changed model meanwhile; embedding again", document_id)
            continue
        if reindex:
            # Also when this document was done before: a redelivered task finishes what a
            # worker that died between storing and switching left undone.
            collection_id = Document.objects.filter(pk=document_id).values_list("collection_id", flat=True).first()
            if collection_id is not None:
                collection_reindex_finish(collection_id=collection_id)
        return
    raise ModelChanged(f"Document {document_id}'s collection kept changing model while it was embedded.")


def _document_embed_and_store(prepared: _Prepared) -> bool:
    from ingestion.pipeline import embed_texts

    total = len(prepared.texts)

    def progress(done: int, _total: int) -> None:
        if not document_mark(
            document_id=prepared.document_id, status=Document.Status.PROCESSING, stage="embedding", done=done,
            total=total,
        ):  # fmt: skip
            raise DocumentCancelled

    try:
        vectors = embed_texts(prepared.texts, progress=progress, embedder=prepared.embedder)
    except DocumentCancelled:
        logger.info("document %s was cancelled while it was processed", prepared.document_id)
        return False
    return _document_store_chunks(prepared, vectors)


def document_fail_unexpectedly(*, document_id: int, exc: BaseException, reindex: bool = False) -> None:
    """A bug or an unforeseen input: say so on the document, keep the traceback in the log."""
    logger.error("%s document %s failed", "re-embedding" if reindex else "ingesting", document_id, exc_info=exc)
    document_mark(
        document_id=document_id,
        status=Document.Status.FAILED,
        error=f"Processing stopped on an unexpected error ({type(exc).__name__}); the worker log has details.",
    )


def documents_process(*, document_ids: list[int], progress=None) -> None:
    """Process several documents with one embedding pass over all their chunks (kb_ingest --inline, ingest_documents).

    Bulk ingestion of many small pages otherwise embeds a few chunks at a time; together,
    sorted by length across documents, the batches are full and carry little padding.
    progress(done, total) counts chunks embedded (documents of one collection share a pass).
    Each document shows the shared pass's progress, which also keeps its heartbeat fresh
    for stale-job detection; a pass whose documents were all cancelled stops. A document
    that fails on something unexpected fails alone; a transient error is raised for a retry
    (documents already stored are skipped by it).
    """
    from ingestion.pipeline import embed_texts

    prepared = []
    for pk in document_ids:
        with _failing_alone([pk]):
            item = _document_prepare(document_id=pk)
            if item is not None:
                prepared.append(item)
    by_generation: dict[int, list[_Prepared]] = {}
    for item in prepared:
        by_generation.setdefault(item.generation, []).append(item)
    for group in by_generation.values():
        texts = [t for p in group for t in p.texts]
        vectors = None
        with _failing_alone([p.document_id for p in group]):
            vectors = embed_texts(texts, progress=_group_progress(group, progress), embedder=group[0].embedder)
        if vectors is None:
            continue
        first = 0
        for item in group:
            with _failing_alone([item.document_id]):
                try:
                    _document_store_chunks(item, vectors[first : first + len(item.texts)])
                except ModelChanged:
                    document_process(document_id=item.document_id)
            first += len(item.texts)


@contextmanager
def _failing_alone(document_ids: list[int]) -> Iterator[None]:
    """Run a step of documents_process; an unexpected error fails these documents, not the whole call.

    A transient error goes up, for the task's retry (which skips what is stored); a pass
    whose documents were all cancelled just stops.
    """
    try:
        yield
    except TRANSIENT:
        raise
    except DocumentCancelled:
        logger.info("documents %s were cancelled while they were processed", document_ids)
    except Exception as exc:
        for pk in document_ids:
            document_fail_unexpectedly(document_id=pk, exc=exc)


def _group_progress(group: list[_Prepared], progress=None):
    """progress(done, total) for a shared embedding pass: marks its documents, stops when all are cancelled."""
    ids = [item.document_id for item in group]

    def mark(done: int, total: int) -> None:
        marked = (
            Document.objects.filter(pk__in=ids)
            .exclude(status=Document.Status.CANCELLED)
            .update(
                status=Document.Status.PROCESSING,
                stage="embedding",
                progress_done=done,
                progress_total=total,
                updated_at=timezone.now(),
            )  # fmt: skip
        )
        if not marked:
            raise DocumentCancelled
        if progress is not None:
            progress(done, total)

    return mark


@dataclass
class _Prepared:
    document_id: int
    collection_id: int
    content_hash: str
    parsed: object  # ingestion.pipeline.ParsedDocument
    texts: list[str]  # what gets embedded: each chunk with its title and heading path
    embedder: object  # ingestion.embeddings.Embedder of the collection's model (or its re-index's)
    generation: int  # the collection generation the vectors are for
    staged: bool  # for a running re-index, not yet searched


def _document_prepare(*, document_id: int, reindex: bool = False) -> _Prepared | None:
    """Parse and chunk a document, marking it as it goes; None if there is nothing (more) to do."""
    from ingestion.embeddings import get_embedder
    from ingestion.errors import IngestError
    from ingestion.pipeline import embedding_text, parse_and_chunk

    document = Document.objects.select_related("collection").filter(pk=document_id).first()
    if document is None:
        logger.info("document %s is gone; nothing to do", document_id)
        return None
    collection = document.collection
    if reindex:
        generation, spec = collection.reindex_generation, collection.reindex_spec
        if generation is None:
            return None  # the re-index finished (or was replaced) before this task ran
        chunks = Chunk.objects.filter(document=document)
        in_use = chunks.filter(generation=collection.embed_generation)
        if chunks.filter(generation=generation).exists() or not in_use.exists():
            # Re-embedded already (a redelivered task), or not ingested yet: its ingestion
            # queues it for the re-index when it stores the chunks.
            return None
    elif document.status in (Document.Status.READY, Document.Status.CANCELLED):
        return None  # a redelivered task for work already done, or work nobody wants any more
    else:
        generation, spec = collection.embed_generation, collection.embed_spec
    embedder = get_embedder(spec)
    Document.objects.filter(pk=document_id).update(attempts=models.F("attempts") + 1)
    if not document_mark(document_id=document_id, status=Document.Status.PROCESSING, stage="parsing"):
        return None
    try:
        with _local_file(document.file.name) as path:
            if not path.exists():
                raise IngestError("The uploaded file is missing from storage; upload it again.")
            parsed = parse_and_chunk(path, source_path=document.source_path, embedder=embedder)
        if not parsed.chunks:
            raise IngestError("No text could be extracted from this file.")
    except IngestError as exc:
        document_mark(document_id=document_id, status=Document.Status.FAILED, error=str(exc))
        logger.info("document %s failed: %s", document_id, exc)
        return None
    texts = [
        embedding_text(title=parsed.title, heading_path=c.heading_path, text=c.text, embedder=embedder)
        for c in parsed.chunks
    ]
    if not document_mark(
        document_id=document_id, status=Document.Status.PROCESSING, stage="embedding", total=len(texts)
    ):
        return None
    return _Prepared(
        document_id=document_id, collection_id=collection.pk, content_hash=document.content_hash, parsed=parsed,
        texts=texts, embedder=embedder, generation=generation, staged=reindex,
    )  # fmt: skip


def _document_store_chunks(prepared: _Prepared, vectors) -> bool:
    from kb import vector_indexes

    parsed = prepared.parsed
    if vectors and not transaction.get_connection().in_atomic_block:
        # The first vectors of a new size get their index (built concurrently, outside any transaction).
        vector_indexes.ensure(len(vectors[0]))
    if prepared.staged:
        return document_stage_chunks(
            document_id=prepared.document_id, content_hash=prepared.content_hash, generation=prepared.generation,
            chunks=parsed.chunks, vectors=vectors,
        )  # fmt: skip
    return document_replace_chunks(
        document_id=prepared.document_id, content_hash=prepared.content_hash, title=parsed.title,
        chunks=parsed.chunks, vectors=vectors, metadata=parsed.metadata, generation=prepared.generation,
    )  # fmt: skip


@contextmanager
def _local_file(name: str) -> Iterator[Path]:
    """A local path to a stored file: the file itself on disk storage, else a temporary copy."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp, default_storage.open(name, "rb") as src:
        shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)


def _collection_generations(collection_id: int) -> tuple[int, int | None] | None:
    """(embed_generation, reindex_generation) of a collection, locked against a switch until commit.

    FOR SHARE: documents of one collection store their chunks side by side, while
    collection_reindex_finish (FOR UPDATE) waits for them, and they for it.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT embed_generation, reindex_generation FROM {Collection._meta.db_table} WHERE id = %s FOR SHARE",
            [collection_id],
        )
        return cursor.fetchone()


def _chunk_rows(document: Document, generation: int, chunks, vectors) -> list[Chunk]:
    return [
        Chunk(
            document=document,
            collection_id=document.collection_id,
            generation=generation,
            ordinal=i,
            text=c.text,
            heading_path=c.heading_path[:1000],
            page=c.page,
            start_char=c.start_char,
            end_char=c.end_char,
            embedding=vector,
        )
        for i, (c, vector) in enumerate(zip(chunks, vectors, strict=True))
    ]


@transaction.atomic
def document_replace_chunks(
    *, document_id: int, content_hash: str, title: str, chunks, vectors, metadata: dict | None = None,
    generation: int | None = None,
) -> bool:  # fmt: skip
    """Swap a document's chunks for new ones in one transaction; False if the work is stale.

    `generation` is the collection generation the vectors were embedded for; ModelChanged
    if the collection has switched to another since.
    """
    collection_id = Document.objects.filter(pk=document_id).values_list("collection_id", flat=True).first()
    locked = _collection_generations(collection_id) if collection_id is not None else None
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if (
        locked is None
        or document is None
        or document.content_hash != content_hash
        or document.status == Document.Status.CANCELLED
    ):
        # Deleted, re-uploaded while we worked (the newer version's task will store it), or cancelled.
        return False
    current, reindexing = locked
    if generation is not None and generation != current:
        raise ModelChanged
    # Every generation goes: a running re-index's staged chunks are of the previous version.
    Chunk.objects.filter(document=document).delete()
    Chunk.objects.bulk_create(_chunk_rows(document, current, chunks, vectors), batch_size=500)
    if title:
        document.title = title[:500]
    if metadata is not None:
        document.metadata = metadata
    document.chunk_count = len(chunks)
    _set_status(document, Document.Status.READY, stage="", done=len(chunks), total=len(chunks), error="")
    document.save()
    if reindexing is not None:
        # A version stored during a re-index needs the new model's vectors too.
        from ingestion.tasks import reindex_document

        reindex_document.delay_on_commit(document.pk)
    return True


@transaction.atomic
def document_stage_chunks(*, document_id: int, content_hash: str, generation: int, chunks, vectors) -> bool:
    """Store a document's chunks for a running re-index, unsearched until the switch; False if stale."""
    collection_id = Document.objects.filter(pk=document_id).values_list("collection_id", flat=True).first()
    locked = _collection_generations(collection_id) if collection_id is not None else None
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if locked is None or locked[1] != generation or document is None or document.content_hash != content_hash:
        return False  # the re-index finished or was replaced, or the document changed or went
    Chunk.objects.filter(document=document, generation=generation).delete()
    Chunk.objects.bulk_create(_chunk_rows(document, generation, chunks, vectors), batch_size=500)
    _set_status(document, Document.Status.READY, stage="", done=len(chunks), total=len(chunks), error="")
    document.save(update_fields=["status", "stage", "progress_done", "progress_total", "error", "updated_at"])
    return True


@transaction.atomic
def document_delete(*, user, document: Document) -> None:
    """Delete a document, its chunks and its stored file."""
    if not access.can_edit(user, document.collection):
        raise PermissionError("You cannot delete documents of this collection.")
    name = document.file.name
    audit_record(
        actor=user, action="document.delete", collection=document.collection,
        target=document.source_path, document_id=document.pk,
    )  # fmt: skip
    document.delete()
    transaction.on_commit(lambda: default_storage.delete(name))


# Upload batches and archives -------------------------------------------------------------


def _empty_summary() -> dict:
    return {"files": 0, "created": 0, "updated": 0, "unchanged": 0, "removed": 0, "refused": 0, "ignored": 0,
            "errors": [], "removed_paths": []}  # fmt: skip


def batch_create(*, user, collection: Collection, label: str = "") -> UploadBatch:
    """Open a batch for files uploaded together: one progress bar and one cancel for all of them."""
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add documents to this collection.")
    creator = user if getattr(user, "is_authenticated", False) else None
    return UploadBatch.objects.create(collection=collection, created_by=creator, label=label[:300],
                                      summary=_empty_summary())  # fmt: skip


def batch_upload(*, user, collection: Collection, files: list) -> dict:
    """Add files uploaded together (documents and ZIP archives of pages) as one batch; returns its summary."""
    label = files[0].name if len(files) == 1 else f"{len(files)} files"
    batch = batch_create(user=user, collection=collection, label=label)
    for upload in files:
        batch_add_file(user=user, batch=batch, file=upload, name=upload.name)
    return batch.summary


def _is_archive(file) -> bool:
    """A ZIP that is a tree of pages, told by content: Office files are ZIPs too, but one document each."""
    import zipfile

    from ingestion.archives import is_document_package

    file.seek(0)
    head = file.read(4)
    file.seek(0)
    if head != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return not is_document_package(archive)
    except zipfile.BadZipFile:
        return False  # the reader names the damage on the document
    finally:
        file.seek(0)


def batch_add_file(*, user, batch: UploadBatch, file, name: str, enqueue: bool = True) -> dict:
    """Add one uploaded file (a document, or a ZIP of pages) to a batch; returns the batch's summary.

    Refusals (empty, too large, unsafe) are recorded in the summary with their reason; the
    rest of the batch goes on.
    """
    summary = {**_empty_summary(), **batch.summary}
    summary["files"] += 1
    try:
        if _is_archive(file):
            archive_summary = archive_upload(
                user=user, collection=batch.collection, file=file, name=name, batch=batch, enqueue=enqueue
            )
            for key in ("created", "updated", "unchanged", "removed", "refused", "ignored"):
                summary[key] += archive_summary[key]
            summary["errors"].extend(archive_summary["errors"])
            summary["removed_paths"].extend(archive_summary["removed_paths"])
        else:
            outcome = document_upload(
                user=user, collection=batch.collection, file=file, source_path=name, enqueue=enqueue, batch=batch
            )
            summary[outcome.outcome] += 1
    except ValidationError as exc:
        summary["refused"] += 1
        summary["errors"].append({"source": name, "reason": " ".join(exc.messages)})
    batch.summary = summary
    batch.save(update_fields=["summary"])
    return summary


def archive_upload(
    *, user, collection: Collection, file, name: str, batch: UploadBatch | None = None, enqueue: bool = True
) -> dict:
    """Sync a ZIP of pages (a wiki export) into the collection.

    Each page becomes a document whose source path is its path inside the archive. Against
    the previous upload of an archive of the same name: new pages are added, changed ones
    replaced, unchanged ones cost nothing, and pages that vanished from it are removed.
    Unsafe members (absolute or '..' paths, encrypted, too large) are refused one by one;
    an archive past the limits (member count, unpacked size, compression ratio) is refused whole.
    """
    import zipfile

    from ingestion.archives import limits_from_settings, pages
    from ingestion.errors import IngestError

    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add documents to this collection.")
    archive_name = _clean_source_path(name)
    summary = _empty_summary()
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as exc:
        raise ValidationError(f"{archive_name} is a damaged ZIP archive.") from exc
    with archive:
        try:
            found = pages(archive, limits_from_settings())
        except IngestError as exc:
            raise ValidationError(f"{archive_name}: {exc}") from exc
        summary["ignored"] = found.ignored
        for member_name, reason in found.refused:
            summary["refused"] += 1
            summary["errors"].append({"source": member_name, "reason": reason})
        to_process: list[int] = []
        for member in found.members:
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as data:
                try:
                    with archive.open(member.info) as source:
                        shutil.copyfileobj(source, data, 1 << 20)
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                    # CRC mismatch, damaged data or an unsupported compression method
                    summary["refused"] += 1
                    summary["errors"].append({"source": member.path, "reason": f"Damaged inside the archive ({exc})."})
                    continue
                try:
                    outcome = document_upload(
                        user=user, collection=collection, file=data, source_path=member.path,
                        enqueue=False, batch=batch, source_archive=archive_name,
                    )  # fmt: skip
                except ValidationError as exc:
                    summary["refused"] += 1
                    summary["errors"].append({"source": member.path, "reason": " ".join(exc.messages)})
                    continue
            summary[outcome.outcome] += 1
            if outcome.outcome != "unchanged":
                to_process.append(outcome.document.pk)
        if enqueue:
            _enqueue_ingest_group(to_process)
    summary["removed_paths"] = documents_remove_vanished(
        user=user, collection=collection, archive_name=archive_name, present=found.listed
    )
    summary["removed"] = len(summary["removed_paths"])
    counts = {k: v for k, v in summary.items() if k not in ("errors", "removed_paths")}
    audit_record(
        actor=user, action="archive.sync", collection=collection, target=archive_name,
        counts=counts, removed_paths=summary["removed_paths"][:200],
    )  # fmt: skip
    return summary


@transaction.atomic
def documents_remove_vanished(*, user, collection: Collection, archive_name: str, present: set[str]) -> list[str]:
    """Delete the archive's documents whose pages are no longer in it; their chunks and files go too."""
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot remove documents of this collection.")
    vanished = list(
        Document.objects.filter(collection=collection, source_archive=archive_name).exclude(source_path__in=present)
    )
    names = [d.file.name for d in vanished]
    Document.objects.filter(pk__in=[d.pk for d in vanished]).delete()
    transaction.on_commit(lambda: [default_storage.delete(n) for n in names if n])
    return sorted(d.source_path for d in vanished)


@transaction.atomic
def batch_cancel(*, user, batch: UploadBatch) -> int:
    """Cancel what a batch has not finished; returns how many documents were cancelled.

    A worker in the middle of one sees it at its next progress mark and stops without
    storing anything; a document being replaced keeps its previous version searchable.
    """
    if not access.can_edit(user, batch.collection):
        raise PermissionError("You cannot cancel uploads in this collection.")
    who = getattr(user, "username", "") or "an editor"
    cancelled = Document.objects.filter(batch=batch).exclude(status__in=FINISHED).update(
        status=Document.Status.CANCELLED, stage="", error=f"Cancelled by {who} before it finished.",
        updated_at=timezone.now(),
    )  # fmt: skip
    batch.cancelled_at = timezone.now()
    batch.save(update_fields=["cancelled_at"])
    audit_record(
        actor=user, action="batch.cancel", collection=batch.collection, target=f"upload batch {batch.pk}",
        cancelled=cancelled,
    )  # fmt: skip
    return cancelled


def documents_recover_stale(*, collection_ids=None) -> dict:
    """Re-queue (once) or fail documents whose processing stopped without a word; resend lost queued ones.

    A working task refreshes updated_at at every progress mark; one silent for longer than
    KB_STALE_SECONDS has died without Celery redelivering it (e.g. Redis lost the message).
    Called on read by the progress views, so no scheduler is needed.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.KB_STALE_SECONDS)
    result = {"requeued": 0, "failed": 0}
    with transaction.atomic():
        stale = Document.objects.select_for_update(skip_locked=True).filter(
            status=Document.Status.PROCESSING, updated_at__lt=cutoff
        )
        if collection_ids is not None:
            stale = stale.filter(collection_id__in=collection_ids)
        for document in stale:
            if document.attempts < settings.KB_MAX_ATTEMPTS:
                _set_status(document, Document.Status.QUEUED, stage="", done=0, total=0, error="")
                document.save()
                _enqueue_ingest(document)
                result["requeued"] += 1
            else:
                _set_status(document, Document.Status.FAILED, stage="", done=0, total=0, error=(
                    f"Processing stopped without finishing {document.attempts} times (the worker may have "
                    "crashed or run out of memory); upload the file again or ask an administrator."
                ))  # fmt: skip
                document.save()
                result["failed"] += 1
        # Queued and never picked up for as long: its message may be lost (a broker restarted
        # without persistence). Send it again; if the first message was only waiting behind a
        # backlog, the task finds the work done or in hand and returns, so the copy costs nothing.
        lost = Document.objects.select_for_update(skip_locked=True).filter(
            status=Document.Status.QUEUED, updated_at__lt=cutoff
        )
        if collection_ids is not None:
            lost = lost.filter(collection_id__in=collection_ids)
        for document in lost:
            document.save(update_fields=["updated_at"])
            _enqueue_ingest(document)
            result["requeued"] += 1
    if result["requeued"] or result["failed"]:
        logger.warning("stale documents: %s", result)
    return result


def collection_reindex(*, user, collection: Collection, inline: bool = False, progress=None) -> int:
    """Embed every document of the collection again with the configured model, of any size.

    The new chunks are written beside the ones in use, under a new generation that search
    ignores; when the last document is done, collection_reindex_finish switches the
    collection to the new model in one transaction. Until then questions are answered
    from the old vectors with the old model. Running it again while a re-index of the same
    model is under way resumes it (documents done are not embedded twice); with another
    model configured meanwhile it starts over with that one. Returns the number of
    documents queued (or, inline, processed).
    """
    from ingestion.embeddings import configured_spec
    from kb import vector_indexes

    if not access.can_edit(user, collection):
        raise PermissionError("You cannot re-index this collection.")
    spec = configured_spec()
    vector_indexes.check_dim(spec.dim)
    # Built before the first new vector arrives, and concurrently when not inside a
    # transaction: searches and ingestion go on while it is made.
    vector_indexes.ensure(spec.dim)
    with transaction.atomic():
        collection = Collection.objects.select_for_update().get(pk=collection.pk)
        previous = collection.reindex_spec
        if previous != spec:
            if previous is not None:
                # Another model was configured meanwhile: what the earlier run staged is of no use.
                Chunk.objects.filter(collection=collection, generation=collection.reindex_generation).delete()
            collection.reindex_model = spec.as_json()
            collection.reindex_generation = _next_generation()
            collection.save(update_fields=["reindex_model", "reindex_generation"])
        ids = list(_documents_to_reindex(collection))
        audit_record(
            actor=user, action="collection.reindex", collection=collection, target=collection.name,
            documents=len(ids), model=spec.as_json(), previous_model=collection.embed_model,
            resumed=previous == spec,
        )  # fmt: skip
    for n, document_id in enumerate(ids, start=1):
        if inline:
            document_process(document_id=document_id, reindex=True)
        else:
            from ingestion.tasks import reindex_document

            reindex_document.delay(document_id)
        if progress is not None:
            progress(n, len(ids))
    # Nothing (left) to embed, e.g. an empty collection: switch now.
    collection_reindex_finish(collection_id=collection.pk)
    return len(ids)


def _next_generation() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [GENERATION_SEQUENCE])
        return cursor.fetchone()[0]


def _documents_to_reindex(collection: Collection):
    """Ids of the documents in use (with chunks of the current generation) not yet embedded for the re-index."""
    # NOT EXISTS probes chunk_unique_ordinal (document, generation, ...) per chunk, so the
    # check after each document stops at the first one not done instead of hashing them all.
    staged = Chunk.objects.filter(document_id=models.OuterRef("document_id"), generation=collection.reindex_generation)
    return (
        Chunk.objects.filter(collection=collection, generation=collection.embed_generation)
        .exclude(models.Exists(staged))
        .values_list("document_id", flat=True)
        .distinct()
        .order_by("document_id")
    )


def collection_reindex_finish(*, collection_id: int) -> bool:
    """Switch the collection to its re-index's model once every document has its new chunks; True if it did.

    One transaction: the new chunks become the ones searched, the old ones are deleted, and
    the collection records its new model, so a question sees either all old or all new.
    """
    with transaction.atomic():
        collection = Collection.objects.select_for_update().filter(pk=collection_id).first()
        if collection is None or collection.reindex_generation is None:
            return False
        if _documents_to_reindex(collection).exists():
            return False  # still under way, or a document failed: the old model serves meanwhile
        old_model, new_generation = collection.embed_model, collection.reindex_generation
        Chunk.objects.filter(collection=collection).exclude(generation=new_generation).delete()
        collection.embed_model, collection.embed_generation = collection.reindex_model, new_generation
        collection.reindex_model = collection.reindex_generation = None
        collection.save(update_fields=["embed_model", "embed_generation", "reindex_model", "reindex_generation"])
        counts = (
            Chunk.objects.filter(document=models.OuterRef("pk"))
            .values("document")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        Document.objects.filter(collection=collection).update(chunk_count=Coalesce(models.Subquery(counts), 0))
        audit_record(
            actor=None, action="collection.reindex.switch", collection=collection, target=collection.name,
            model=collection.embed_model, previous_model=old_model,
        )  # fmt: skip
    logger.info("collection %s now searches with %s", collection_id, collection.embed_spec)
    return True


# Conversations ---------------------------------------------------------------------------


STOPPED = "Stopped at your request."
NO_SOURCE_ANSWER = "I found nothing in the collections you can read that answers this question."


def _validate_question(question: str) -> str:
    question = question.strip()
    if not question:
        raise ValidationError("Ask a question first.")
    if len(question) > 2000:
        raise ValidationError("Questions are limited to 2,000 characters.")
    return question


def _retrieve_into(message: Message, *, user, collections, top_k: int | None) -> retrieval.Result:
    """Fill a message's sources for its search query, or answer it at once when none is found."""
    sources, result = answering.retrieve_sources(
        user=user, question=message.search_query or message.question, collections=collections, top_k=top_k
    )
    message.sources = answering.fit_to_budget(sources, settings.KB_CONTEXT_TOKENS)
    if not message.sources:
        # Nothing readable answers it: say so plainly and never call the model.
        message.status = Message.Status.NO_ANSWER
        message.answer = NO_SOURCE_ANSWER
        message.finished_at = timezone.now()
    return result


def message_ask(
    *,
    user,
    question: str,
    collections: list[Collection],
    conversation: Conversation | None = None,
    top_k: int | None = None,
) -> tuple[Message, retrieval.Result]:
    """Record a question, retrieve its sources from what the user may read, and return the pending message.

    A follow-up in a conversation is first made standalone for retrieval (a possible model
    call), outside any transaction: a slow model server must not hold one open.
    """
    question = _validate_question(question)
    if conversation is not None and conversation.user_id != user.pk:
        raise PermissionError("A conversation takes questions from its owner only.")
    readable = [c for c in collections if access.can_read(user, c)]
    history = selectors.message_history(user=user, conversation=conversation) if conversation else []
    message = Message(question=question, search_query=answering.standalone_question(question, history))
    result = _retrieve_into(message, user=user, collections=readable, top_k=top_k)
    with transaction.atomic():
        if conversation is None:
            conversation = Conversation.objects.create(user=user, title=question[:200])
            conversation.collections.set(readable)
        message.conversation = conversation
        message.save()
        conversation.save(update_fields=["updated_at"])
    return message, result


def message_regenerate(*, user, message: Message, top_k: int | None = None) -> Message:
    """Answer a message again: retrieve afresh with the user's current access, then stream anew."""
    if not message.is_finished:
        raise ValidationError("This answer is still being written; stop it first.")
    conversation = message.conversation
    history = selectors.message_history(user=user, conversation=conversation, before=message)
    collections = list(selectors.conversation_collections(user=user, conversation=conversation))
    message.search_query = answering.standalone_question(message.question, history)
    message.answer, message.error, message.finished_at = "", "", None
    message.status, message.stop_requested = Message.Status.PENDING, False
    _retrieve_into(message, user=user, collections=collections, top_k=top_k)
    with transaction.atomic():
        # The old answer's judgements keep their copy of it but no longer hang on the message.
        Feedback.objects.filter(message=message).update(message=None)
        message.save()
        conversation.save(update_fields=["updated_at"])
    return message


def message_stop(*, message: Message) -> Message:
    """Ask the stream writing this answer to stop; an answer not yet begun ends here."""
    Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(stop_requested=True)
    stopped = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.INCOMPLETE, error=STOPPED, finished_at=timezone.now()
    )
    message.refresh_from_db()
    if stopped:
        logger.info("message %s stopped before it began", message.pk)
    return message


def feedback_give(*, user, message: Message, rating: int, comment: str = "") -> Feedback:
    """Record (or change) a reader's thumbs up or down on a finished answer."""
    if not message.is_finished or not message.answer:
        raise ValidationError("Only a finished answer can be rated.")
    if rating not in Feedback.Rating.values:
        raise ValidationError("Rate an answer up or down.")
    feedback, _ = Feedback.objects.update_or_create(
        message=message,
        user=user,
        defaults={
            "rating": rating,
            "comment": comment.strip()[:2000],
            "question": message.question,
            "answer": message.answer,
        },
    )
    return feedback


def message_finish(*, message: Message, answer: str, status: str, error: str = "") -> Message:
    """Store the generated answer (or what arrived of it) and how it ended."""
    message.answer = answer
    message.status = status
    message.error = error
    message.finished_at = timezone.now()
    message.save(update_fields=["answer", "status", "error", "finished_at"])
    return message


# How often a running answer looks for a Stop request, in seconds.
STOP_POLL_SECONDS = 0.25
DISCONNECTED = "The answer was stopped before it finished: the connection to the reader was closed."
NO_LONGER_READABLE = "None of the passages found for this question is readable by you any more."


async def message_answer(*, message: Message, sources: list[dict], history=()) -> AsyncIterator[str]:
    """Stream a claimed message's answer from the model server, then store how it ended.

    The one place answers are generated, for the pages' stream and the JSON API alike. It
    stops when the reader presses Stop (a row flag another process may set), keeps what
    arrived when the model server fails or the reader goes away (close this generator, e.g.
    with aclosing, and the model stream is closed too, which ends generation), and never
    calls the model without a readable source.
    """
    if not sources:
        await sync_to_async(message_finish)(message=message, answer=NO_LONGER_READABLE, status=Message.Status.NO_ANSWER)
        return
    pieces: list[str] = []
    status, error = Message.Status.COMPLETE, ""
    next_check = time.monotonic() + STOP_POLL_SECONDS
    try:
        async with aclosing(answering.astream_answer(message.question, sources, history)) as stream:
            async for piece in stream:
                pieces.append(piece)
                yield piece
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + STOP_POLL_SECONDS
                    if await Message.objects.filter(pk=message.pk, stop_requested=True).aexists():
                        status, error = Message.Status.INCOMPLETE, STOPPED
                        break  # leaving the block closes the model stream: generation stops
    except llm.ModelServerError as exc:
        status = Message.Status.INCOMPLETE if pieces else Message.Status.FAILED
        error = str(exc)
    except (asyncio.CancelledError, GeneratorExit):
        # The reader went away (cancelled while awaiting the model, or closed while its
        # consumer waited to send): the model stream is closed above; keep what arrived.
        await sync_to_async(message_finish)(
            message=message, answer="".join(pieces), status=Message.Status.INCOMPLETE, error=DISCONNECTED
        )
        raise
    await sync_to_async(message_finish)(message=message, answer="".join(pieces), status=status, error=error)


def message_answer_start(*, user, message: Message) -> tuple[list[dict], list, bool]:
    """What answering a message needs, read and claimed in one go: (sources, history, claimed).

    Nothing is read for a message that is not pending: only its writer needs its sources.

    The pages' stream and the JSON API call this through one sync_to_async each: every
    separate call waits its turn on the one thread that runs the ORM, before the model
    can be asked for a first token.
    """
    if message.status != Message.Status.PENDING:
        return [], [], False  # being written elsewhere (followed through its relay), or finished
    # Read before claiming: a read that fails leaves the message pending for the next stream.
    sources = selectors.message_sources(user=user, message=message)
    history = selectors.message_history(user=user, conversation=message.conversation, before=message)
    return sources, history, message_claim(message=message)


def message_claim(*, message: Message) -> bool:
    """Take a pending message for answering; False if another stream already has it.

    The claim names the answer's relay stream (kb.answer_relay) in the same update, so a
    reader never follows the stream of an earlier answer to the same message.
    """
    stream_key = f"kb:answer:{message.pk}:{uuid.uuid4().hex}"
    claimed = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.STREAMING, stream_key=stream_key
    )
    if claimed:
        message.status, message.stream_key = Message.Status.STREAMING, stream_key
    return bool(claimed)
