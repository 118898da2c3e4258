"""Documents: uploads (single files and ZIP archives of pages), batches, deletion with undo, purge.

Processing itself (parse, chunk, embed, store) is ingestion's: these services store the
file, record the document and queue it, once their transaction commits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from ingestion import archives, queue
from ingestion.errors import IngestError
from kb import access
from kb.audit import audit_record
from kb.models import BatchSummary, Chunk, Collection, Document, Source, UploadBatch

logger = logging.getLogger(__name__)


@dataclass
class UploadOutcome:
    document: Document
    outcome: str  # "created" | "updated" | "unchanged"


@dataclass(frozen=True)
class PageOrigin:
    """Where a synced page came from: its source, the source's version marker, its address and dates."""

    source: Source
    ref: str
    url: str = ""
    modified: datetime | None = None
    title: str = ""

    def fields(self, now: datetime) -> dict:
        return {
            "source": self.source, "source_ref": self.ref[:200], "url": self.url[:2000],
            "source_modified": self.modified, "seen_at": now,
        }  # fmt: skip


def _hash_file(file) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
    file.seek(0)
    return digest.hexdigest()


def _clean_source_path(source_path: str) -> str:
    cleaned = archives.clean_upload_path(source_path)
    if cleaned is None:
        raise ValidationError(f"Unusable file name {source_path!r}.")
    return cleaned


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
    origin: PageOrigin | None = None,
) -> UploadOutcome:
    """Store an uploaded file as a document of the collection and queue it for ingestion.

    The same content again (under the same path, or any path of the collection) is
    'unchanged' and costs no work; new content under a known path replaces that
    document's chunks once the new version is processed. With enqueue=False the caller
    processes it (kb_ingest --inline). A page of a source (origin) is its own document
    whatever other document holds the same text, and never takes over a path another source
    or an upload holds.
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
        if existing is not None and existing.deleted_at is not None:
            # Deleted and not purged yet: this upload takes its place, the deleted one goes for good.
            audit_record(
                actor=user, action="document.purge", collection=collection, target=source_path,
                document_id=existing.pk, reason="uploaded again",
            )  # fmt: skip
            _purge([existing])
            existing = None
        if existing is not None and existing.source_id != (origin.source.pk if origin else None):
            holder = f"the source {existing.source.name}" if existing.source_id else "an upload"
            raise ValidationError(f"{source_path} is already in the collection, from {holder}.")
        redo = (Document.Status.FAILED, Document.Status.CANCELLED)
        if existing and existing.content_hash == content_hash and existing.status not in redo:
            if source_archive and existing.source_archive != source_archive:
                existing.source_archive = source_archive  # now also listed by this archive: synced with it
                existing.save(update_fields=["source_archive"])
            if origin is not None:
                Document.objects.filter(pk=existing.pk).update(**origin.fields(timezone.now()))
            return UploadOutcome(existing, "unchanged")
        if existing is None and origin is None:
            twin = Document.objects.alive().filter(collection=collection, content_hash=content_hash).first()
            if twin is not None and twin.status not in redo:
                return UploadOutcome(twin, "unchanged")
        suffix = PurePosixPath(source_path).suffix.lower()[:16]
        # Generated names: nothing a user typed becomes a path on disk.
        stored_name = _file_store(f"documents/{uuid.uuid4().hex}{suffix}", file, source_path)
        try:
            document, outcome = _document_store(
                user=user, collection=collection, existing=existing, source_path=source_path,
                content_hash=content_hash, stored_name=stored_name, size=size, batch=batch,
                source_archive=source_archive, origin=origin,
            )  # fmt: skip
        except BaseException:
            default_storage.delete(stored_name)  # the row never pointed at it: leave no orphan
            raise
        audit_record(
            actor=user, action=f"document.{'upload' if outcome == 'created' else 'replace'}",
            collection=collection, target=source_path, document_id=document.pk, size=size,
        )  # fmt: skip
        if enqueue:
            queue.ingest(document.pk)
    return UploadOutcome(document, outcome)


_STORE_ERRORS = {
    errno.ENOSPC: "its disk is full",
    errno.EDQUOT: "its disk quota is used up",
    errno.EROFS: "its upload folder is read-only",
    errno.EACCES: "it may not write its upload folder",
    errno.EPERM: "it may not write its upload folder",
}


def _file_store(name: str, file, source_path: str) -> str:
    """Save an upload under name; a disk that is full or unwritable refuses it, keeping nothing."""
    try:
        return default_storage.save(name, File(file))
    except OSError as exc:
        # FileSystemStorage leaves what it wrote of a file it could not finish.
        with contextlib.suppress(OSError):
            default_storage.delete(name)
        logger.error("upload %s not stored in %s: %s", source_path, settings.MEDIA_ROOT, exc)
        why = _STORE_ERRORS.get(exc.errno, "it could not write the file")
        raise ValidationError(
            f"{source_path} was not stored: the server could not save it ({why}). Nothing was kept; "
            "tell your kb administrator."
        ) from exc


def _document_store(
    *, user, collection, existing, source_path: str, content_hash: str, stored_name: str, size: int,
    batch: UploadBatch | None, source_archive: str, origin: PageOrigin | None,
) -> tuple[Document, str]:  # fmt: skip
    uploader = user if getattr(user, "is_authenticated", False) else None
    synced = origin.fields(timezone.now()) if origin else {}
    title = (origin.title if origin else "")[:500] or _title_from(source_path)
    if existing is None:
        document = Document.objects.create(
            collection=collection,
            title=title,
            source_path=source_path,
            content_hash=content_hash,
            file=stored_name,
            size=size,
            uploaded_by=uploader,
            batch=batch,
            source_archive=source_archive,
            **synced,
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
    for name, value in synced.items():
        setattr(existing, name, value)
    if origin is not None:
        existing.title = title
    existing.save(update_fields=[
        "content_hash", "file", "size", "uploaded_by", "batch", "attempts", "source_archive", "updated_at",
        "title", *synced,
    ])  # fmt: skip
    # A new version is processed from the start, whatever became of the one before.
    Document.objects.filter(pk=existing.pk).transition(
        Document.Status.QUEUED, stage="", progress_done=0, progress_total=0, error=""
    )
    existing.refresh_from_db(fields=["status", "stage", "progress_done", "progress_total", "error", "updated_at"])
    if old_file and old_file != stored_name:
        transaction.on_commit(lambda: default_storage.delete(old_file))
    return existing, "updated"


@transaction.atomic
def document_delete(*, user, document: Document) -> int:
    """Delete a document; returns how many passages went.

    Its passages leave search, answers and citations at once (deleted in this transaction);
    the row and the stored file stay, hidden everywhere, for KB_DELETE_GRACE_SECONDS so that
    document_restore can undo it, then documents_purge_expired removes them.
    """
    if not access.can_edit(user, document.collection):
        raise PermissionError("You cannot delete documents of this collection.")
    row = Document.objects.alive().select_for_update().filter(pk=document.pk).first()
    if row is None:
        return 0  # deleted already
    # A worker in the middle of it stops at its next progress mark and stores nothing.
    Document.objects.filter(pk=row.pk).transition(Document.Status.CANCELLED, stage="", error="Deleted.")
    passages, _ = Chunk.objects.filter(document=row).delete()
    document.deleted_at = timezone.now()
    document.deleted_by = user if getattr(user, "is_authenticated", False) else None
    Document.objects.filter(pk=row.pk).update(deleted_at=document.deleted_at, deleted_by=document.deleted_by)
    audit_record(
        actor=user, action="document.delete", collection=document.collection,
        target=document.source_path, document_id=document.pk, passages=passages,
    )  # fmt: skip
    return passages


@transaction.atomic
def document_restore(*, user, document: Document) -> Document:
    """Undo a delete not yet purged: the document comes back and is processed again."""
    if not access.can_edit(user, document.collection):
        raise PermissionError("You cannot restore documents of this collection.")
    if not Document.objects.deleted().select_for_update().filter(pk=document.pk).exists():
        return document  # restored already (or purged)
    Document.objects.filter(pk=document.pk).update(deleted_at=None, deleted_by=None, attempts=0)
    Document.objects.filter(pk=document.pk).transition(
        Document.Status.QUEUED, stage="", progress_done=0, progress_total=0, error=""
    )
    audit_record(
        actor=user, action="document.restore", collection=document.collection,
        target=document.source_path, document_id=document.pk,
    )  # fmt: skip
    queue.ingest(document.pk)
    document.refresh_from_db()
    return document


def _purge(documents: list[Document]) -> None:
    """Remove deleted documents for good: rows (and any chunks), then their files once committed."""
    names = [d.file.name for d in documents if d.file.name]
    Document.objects.filter(pk__in=[d.pk for d in documents]).delete()
    transaction.on_commit(lambda: [default_storage.delete(n) for n in names])


@transaction.atomic
def document_purge(*, user, document: Document) -> None:
    """Remove a deleted document for good, now, without waiting for its grace period to end."""
    if document.deleted_at is None:
        raise ValidationError("Only a deleted document can be purged.")
    if not (access.can_edit(user, document.collection) or access.can_purge(user)):
        raise PermissionError("You cannot purge documents of this collection.")
    audit_record(
        actor=user, action="document.purge", collection=document.collection,
        target=document.source_path, document_id=document.pk,
    )  # fmt: skip
    _purge([document])


def documents_purge_expired(*, actor, now: datetime | None = None) -> int:
    """Purge the documents deleted longer than KB_DELETE_GRACE_SECONDS ago; how many went.

    Run by celery beat (ingestion.tasks.purge_deleted); running it twice purges nothing twice.
    """
    if not access.can_purge(actor):
        raise PermissionError("Only the system purges deleted documents.")
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.KB_DELETE_GRACE_SECONDS)
    with transaction.atomic():
        expired = list(
            Document.objects.select_for_update(skip_locked=True).select_related("collection")
            .filter(deleted_at__lt=cutoff)
        )  # fmt: skip
        for document in expired:
            audit_record(
                actor=actor, action="document.purge", collection=document.collection,
                target=document.source_path, document_id=document.pk,
            )  # fmt: skip
        _purge(expired)
    return len(expired)


def batch_create(*, user, collection: Collection, label: str = "") -> UploadBatch:
    """Open a batch for files uploaded together: one progress bar and one cancel for all of them."""
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add documents to this collection.")
    creator = user if getattr(user, "is_authenticated", False) else None
    return UploadBatch.objects.create(
        collection=collection, created_by=creator, label=label[:300], summary=BatchSummary().as_json()
    )


def batch_upload(*, user, collection: Collection, files: list) -> BatchSummary:
    """Add files uploaded together (documents and ZIP archives of pages) as one batch; returns its summary."""
    label = files[0].name if len(files) == 1 else f"{len(files)} files"
    batch = batch_create(user=user, collection=collection, label=label)
    for upload in files:
        summary = batch_add_file(user=user, batch=batch, file=upload, name=upload.name)
    return summary


def batch_add_file(*, user, batch: UploadBatch, file, name: str, enqueue: bool = True) -> BatchSummary:
    """Add one uploaded file (a document, or a ZIP of pages) to a batch; returns the batch's summary.

    Refusals (empty, too large, unsafe) are recorded in the summary with their reason; the
    rest of the batch goes on.
    """
    summary = BatchSummary.from_json(batch.summary)
    summary.files += 1
    try:
        if archives.is_page_archive(file):
            summary.add(
                archive_upload(user=user, collection=batch.collection, file=file, name=name, batch=batch,
                               enqueue=enqueue)
            )  # fmt: skip
        else:
            outcome = document_upload(
                user=user, collection=batch.collection, file=file, source_path=name, enqueue=enqueue, batch=batch
            )
            summary.count(outcome.outcome)
    except ValidationError as exc:
        summary.refuse(name, " ".join(exc.messages))
    batch.summary = summary.as_json()
    batch.save(update_fields=["summary"])
    return summary


def archive_upload(
    *, user, collection: Collection, file, name: str, batch: UploadBatch | None = None, enqueue: bool = True
) -> BatchSummary:
    """Sync a ZIP of pages (a wiki export) into the collection.

    Each page becomes a document whose source path is its path inside the archive. Against
    the previous upload of an archive of the same name: new pages are added, changed ones
    replaced, unchanged ones cost nothing, and pages that vanished from it are removed.
    Unsafe members (absolute or '..' paths, encrypted, too large) are refused one by one;
    an archive past the limits (member count, unpacked size, compression ratio) is refused whole.
    """
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add documents to this collection.")
    archive_name = _clean_source_path(name)
    summary = BatchSummary()
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as exc:
        raise ValidationError(f"{archive_name} is a damaged ZIP archive.") from exc
    with archive:
        try:
            found = archives.pages(archive, archives.limits_from_settings())
        except IngestError as exc:
            raise ValidationError(f"{archive_name}: {exc}") from exc
        summary.ignored = found.ignored
        for member_name, reason in found.refused:
            summary.refuse(member_name, reason)
        to_process: list[int] = []
        for member in found.members:
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as data:
                try:
                    archives.copy_member(archive, member.info, data)
                except IngestError as exc:  # damaged, encrypted or an unsupported compression method
                    summary.refuse(member.path, str(exc))
                    continue
                try:
                    outcome = document_upload(
                        user=user, collection=collection, file=data, source_path=member.path,
                        enqueue=False, batch=batch, source_archive=archive_name,
                    )  # fmt: skip
                except ValidationError as exc:
                    summary.refuse(member.path, " ".join(exc.messages))
                    continue
            summary.count(outcome.outcome)
            if outcome.outcome != "unchanged":
                to_process.append(outcome.document.pk)
        if enqueue:
            queue.ingest_group(to_process)
    summary.removed_paths = documents_remove_vanished(
        user=user, collection=collection, archive_name=archive_name, present=found.listed
    )
    summary.removed = len(summary.removed_paths)
    counts = {k: v for k, v in summary.as_json().items() if k not in ("errors", "removed_paths")}
    audit_record(
        actor=user, action="archive.sync", collection=collection, target=archive_name,
        counts=counts, removed_paths=summary.removed_paths[:200],
    )  # fmt: skip
    return summary


def documents_remove_vanished(*, user, collection: Collection, archive_name: str, present: set[str]) -> list[str]:
    """Delete the archive's documents whose pages are no longer in it; their chunks and files go too."""
    vanished = (
        Document.objects.alive().filter(collection=collection, source_archive=archive_name)
        .exclude(source_path__in=present)
    )  # fmt: skip
    return documents_remove(user=user, collection=collection, documents=vanished)


@transaction.atomic
def documents_remove(*, user, collection: Collection, documents) -> list[str]:
    """Delete these documents of the collection (gone from their archive or source), chunks and files too.

    Returns their source paths, sorted.
    """
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot remove documents of this collection.")
    vanished = list(documents.filter(collection=collection).select_for_update())
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
    cancelled = Document.objects.filter(batch=batch).transition(
        Document.Status.CANCELLED, stage="", error=f"Cancelled by {who} before it finished."
    )
    batch.cancelled_at = timezone.now()
    batch.save(update_fields=["cancelled_at"])
    audit_record(
        actor=user, action="batch.cancel", collection=batch.collection, target=f"upload batch {batch.pk}",
        cancelled=cancelled,
    )  # fmt: skip
    return cancelled


@transaction.atomic
def document_relocate(*, user, document: Document, source_path: str, origin: PageOrigin) -> Document:
    """Move a synced document to its new path (a page renamed or moved at its source), keeping its chunks.

    The text is the same, so nothing is parsed or embedded again: only its path, title and
    address change.
    """
    if not access.can_edit(user, document.collection):
        raise PermissionError("You cannot change documents of this collection.")
    old_path = document.source_path
    source_path = _clean_source_path(source_path)
    taken = Document.objects.filter(collection=document.collection, source_path=source_path).exclude(pk=document.pk)
    if taken.exists():
        raise ValidationError(f"{source_path} is already in the collection.")
    document.source_path = source_path
    document.title = origin.title[:500] or _title_from(document.source_path)
    for name, value in origin.fields(timezone.now()).items():
        setattr(document, name, value)
    document.save()
    audit_record(
        actor=user, action="document.rename", collection=document.collection, target=document.source_path,
        document_id=document.pk, previous=old_path,
    )  # fmt: skip
    return document
