"""Reads of documents and uploads: the collection's document list (search, status, folders,
pages), upload batches with their progress, and what was deleted and may still be restored.

Every read takes the user first and is scoped by kb.access; what the user may not see is a
404, never a 403. A deleted document or collection is shown nowhere but in "Recently
deleted", to those who may restore it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import Count, F, Min, Q, Sum, Window
from django.db.models.functions import RowNumber
from django.http import Http404
from django.utils import timezone

from kb import access
from kb.models import FINISHED, BatchSummary, Chunk, Collection, Document, Role, UploadBatch

__all__ = [
    "DOCUMENT_FILTERS",
    "BatchProgress",
    "DeleteImpact",
    "DocumentPage",
    "batch_document_list",
    "batch_get",
    "batch_overview",
    "batch_recent",
    "batch_report",
    "collection_delete_impact",
    "collection_get_deleted",
    "collections_deleted",
    "document_delete_impact",
    "document_get",
    "document_get_deleted",
    "document_list",
    "document_page",
    "documents_deleted",
    "purge_time",
]


def _readable_documents(user):
    return Document.objects.alive().in_collections(access.readable_collection_ids(user))


def document_list(*, user, collection: Collection):
    return _readable_documents(user).filter(collection=collection)


def document_get(*, user, pk: int) -> Document:
    try:
        return _readable_documents(user).select_related("collection").get(pk=pk)
    except (Document.DoesNotExist, ValueError, TypeError):
        raise Http404("No such document.") from None


# The documents list: search, status, folders, pages -----------------------------------------

# The status filter's choices: what a reader asks for, each a set of document statuses.
DOCUMENT_FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ready": ("Ready", (Document.Status.READY,)),
    "processing": ("Processing", (Document.Status.QUEUED, Document.Status.PROCESSING)),
    "failed": ("Failed or cancelled", (Document.Status.FAILED, Document.Status.CANCELLED)),
}
PAGE_SIZE = 50


@dataclass
class DocumentPage:
    """One page of a collection's documents as filtered, with the folder tree around it."""

    page: Page
    query: str
    status: str
    folder: str  # "" for the top, else "ops/runbooks" (no slashes at either end)
    folders: list[tuple[str, str, int]]  # (name, path, documents under it) directly below `folder`
    breadcrumb: list[tuple[str, str]]  # (name, path) from the top down to `folder`
    total: int  # documents in the collection, unfiltered
    pending: bool  # a document in the folder unfinished: the list polls

    @property
    def documents(self) -> list[Document]:
        return list(self.page.object_list)

    @property
    def filtered(self) -> bool:
        return bool(self.query or self.status)


def _clean_folder(folder: str) -> str:
    return "/".join(part for part in (folder or "").split("/") if part and part not in (".", ".."))


def document_page(
    *, user, collection: Collection, query: str = "", status: str = "", folder: str = "", page: int | str = 1
) -> DocumentPage:
    """The collection's documents matching a search of titles and paths, a status and a folder, a page at a time."""
    documents = document_list(user=user, collection=collection)
    query, folder = (query or "").strip()[:200], _clean_folder(folder)
    status = status if status in DOCUMENT_FILTERS else ""
    in_folder = documents.filter(source_path__startswith=f"{folder}/") if folder else documents
    # Folders below this one, from the paths under it: one query of paths, not of documents.
    counts: dict[str, int] = {}
    depth = folder.count("/") + 1 if folder else 0
    for path in in_folder.values_list("source_path", flat=True):
        parts = path.split("/")
        if len(parts) > depth + 1:
            name = parts[depth]
            counts[name] = counts.get(name, 0) + 1
    prefix = f"{folder}/" if folder else ""
    folders = [(name, prefix + name, n) for name, n in sorted(counts.items(), key=lambda kv: kv[0].casefold())]
    parts = folder.split("/") if folder else []
    breadcrumb = [(name, "/".join(parts[: i + 1])) for i, name in enumerate(parts)]
    shown = in_folder
    if query:
        shown = shown.filter(Q(title__icontains=query) | Q(source_path__icontains=query))
    if status:
        shown = shown.filter(status__in=DOCUMENT_FILTERS[status][1])
    paginator = Paginator(shown.order_by("source_path"), PAGE_SIZE)
    return DocumentPage(
        page=paginator.get_page(page), query=query, status=status, folder=folder, folders=folders,
        breadcrumb=breadcrumb, total=documents.count(), pending=in_folder.unfinished().exists(),
    )  # fmt: skip


# Upload batches and their progress ------------------------------------------------------------


def batch_get(*, user, pk: int, minimum: Role = Role.VIEWER) -> UploadBatch:
    """The upload batch if the user holds at least `minimum` on its collection, else 404."""
    try:
        return UploadBatch.objects.select_related("collection").get(
            pk=pk, collection_id__in=access.collection_ids_with_role(user, minimum)
        )
    except (UploadBatch.DoesNotExist, ValueError, TypeError):
        raise Http404("No such upload.") from None


def batch_recent(*, user, collection: Collection, limit: int = 3) -> list[UploadBatch]:
    return list(
        UploadBatch.objects.filter(collection_id__in=access.readable_collection_ids(user), collection=collection)[
            :limit
        ]
    )


# The time left is shown once there is a rate worth extrapolating: so many seconds after the
# batch's first document started, or so many documents finished, whichever comes first.
ETA_AFTER_SECONDS = 5
ETA_AFTER_DOCUMENTS = 2


@dataclass
class BatchProgress:
    total: int
    queued: int
    processing: int
    ready: int
    failed: int
    cancelled: int
    fraction: float  # 0..1, counting the embedded share of documents in progress
    eta_seconds: int | None  # None until there is a rate to extrapolate from
    reading: int = 0  # of those processing: parsing their file
    embedding: int = 0  # of those processing: embedding their passages

    @property
    def finished(self) -> int:
        return self.ready + self.failed + self.cancelled

    @property
    def done(self) -> bool:
        return self.finished == self.total

    @property
    def percent(self) -> int:
        return int(self.fraction * 100)

    @property
    def eta_text(self) -> str:
        """The time left in words, rounded so that it does not flicker between polls."""
        s = self.eta_seconds
        if s is None:
            return ""
        if s < 60:
            return f"about {max(5, math.ceil(s / 5) * 5)} s left"
        minutes = math.ceil(s / 60) if s < 600 else math.ceil(s / 300) * 5
        if minutes < 60:
            return f"about {minutes} min left"
        return f"about {minutes // 60} h {minutes % 60:02d} min left"


def _progress_counts() -> dict:
    """Aggregates for BatchProgress: counts per status and stage, the embedded share of those in
    progress, and when the first of them started."""
    in_progress = Q(status=Document.Status.PROCESSING, progress_total__gt=0)
    processing = Q(status=Document.Status.PROCESSING)
    return {
        "total": Count("pk"),
        **{s.value: Count("pk", filter=Q(status=s)) for s in Document.Status},
        "embedding": Count("pk", filter=processing & Q(stage="embedding")),
        "done": Sum("progress_done", filter=in_progress),
        "of": Sum("progress_total", filter=in_progress),
        "started": Min("started_at"),
    }


def _progress(counts: dict, now: datetime | None = None) -> BatchProgress:
    total = counts["total"]
    finished = sum(counts[s] for s in FINISHED)
    # Documents in progress count by their embedded share (chunks done / chunks in the document).
    partial = 0.0
    if counts["of"]:
        partial = counts["processing"] * counts["done"] / counts["of"]
    fraction = min(1.0, (finished + partial) / total) if total else 1.0
    # Throughput since the batch's first document started (not since the upload: time in the
    # queue is no measure of the work), extrapolated once it has run a while or a few are done.
    eta = None
    started = counts.get("started")
    if started is not None and 0 < fraction < 1:
        elapsed = ((now or timezone.now()) - started).total_seconds()
        if elapsed >= ETA_AFTER_SECONDS or finished >= ETA_AFTER_DOCUMENTS:
            eta = int(elapsed * (1 - fraction) / fraction)
    embedding = counts.get("embedding", 0)
    return BatchProgress(
        total=total, queued=counts["queued"], processing=counts["processing"], ready=counts["ready"],
        failed=counts["failed"], cancelled=counts["cancelled"], fraction=fraction, eta_seconds=eta,
        reading=counts["processing"] - embedding, embedding=embedding,
    )  # fmt: skip


def batch_overview(*, user, collection: Collection, limit: int = 3, rows: int = 50) -> list[UploadBatch]:
    """The collection's latest batches, each with `progress` (BatchProgress) and `rows` (its first
    `rows` documents by path, each with its own state).

    Two queries whatever the number of batches: one grouped count for every batch's
    progress, one for their documents.
    """
    batches = batch_recent(user=user, collection=collection, limit=limit)
    ids = [b.pk for b in batches]
    alive = Document.objects.alive().filter(batch__in=ids)
    counts = {row.pop("batch"): row for row in alive.values("batch").annotate(**_progress_counts())}
    empty = {"total": 0, **{s.value: 0 for s in Document.Status}, "embedding": 0, "done": None, "of": None}
    listed: dict[int, list[Document]] = {pk: [] for pk in ids}
    first = alive.annotate(
        row=Window(RowNumber(), partition_by=[F("batch_id")], order_by=[F("source_path").asc()])
    ).filter(row__lte=rows)
    for document in first.defer("metadata").order_by("batch", "source_path"):
        listed[document.batch_id].append(document)
    for batch in batches:
        batch.progress = _progress(counts.get(batch.pk, empty))
        batch.rows = listed[batch.pk]
        batch.unfinished = [d for d in batch.rows if not d.is_finished]
    return batches


def batch_document_list(*, user, batch: UploadBatch):
    """The batch's documents, if the user may read its collection (else none)."""
    return _readable_documents(user).filter(batch=batch)


def batch_report(*, user, batch: UploadBatch, extra_errors: list[dict] = ()) -> dict:
    """What a batch came to, for kb_ingest: its summary, then each document's outcome and chunk count."""
    summary = BatchSummary.from_json(batch.summary)
    report = {
        "documents": summary.created + summary.updated + summary.unchanged + summary.refused,
        "created": summary.created, "updated": summary.updated, "unchanged": summary.unchanged,
        "removed": summary.removed, "refused": summary.refused, "ignored": summary.ignored,
        "failed": summary.refused + len(extra_errors), "chunks": 0,
        "errors": summary.errors + list(extra_errors), "removed_paths": summary.removed_paths, "batch": batch.pk,
    }  # fmt: skip
    for document in batch_document_list(user=user, batch=batch):
        if document.status in (Document.Status.FAILED, Document.Status.CANCELLED):
            report["failed"] += 1
            report["errors"].append({"source": document.source_path, "reason": document.error})
        else:
            report["chunks"] += document.chunk_count
    return report


# Deleted, until purged -----------------------------------------------------------------------


def purge_time(deleted_at: datetime) -> datetime:
    """When something deleted at `deleted_at` goes for good (celery beat purges it soon after)."""
    return deleted_at + timedelta(seconds=settings.KB_DELETE_GRACE_SECONDS)


@dataclass
class DeleteImpact:
    """What a delete takes away, for its confirmation: documents and their passages."""

    documents: int
    passages: int
    purge_at: datetime = field(default_factory=lambda: purge_time(timezone.now()))


def document_delete_impact(*, user, document: Document) -> DeleteImpact:
    return DeleteImpact(documents=1, passages=chunks_of(document_ids=[document.pk]))


def collection_delete_impact(*, user, collection: Collection) -> DeleteImpact:
    """What deleting the collection takes from its readers (404 for whoever may not manage it)."""
    if not access.can_manage(user, collection):
        raise Http404("No such collection.")
    documents = Document.objects.alive().filter(collection=collection)
    return DeleteImpact(
        documents=documents.count(), passages=Chunk.objects.live().filter(collection=collection).count()
    )


def chunks_of(*, document_ids) -> int:
    """How many passages of these documents are searched now."""
    return Chunk.objects.live().filter(document_id__in=list(document_ids)).count()


def documents_deleted(*, user, collection: Collection) -> list[Document]:
    """The collection's deleted documents not yet purged, newest first, each with `purge_at`; for editors."""
    if not access.can_edit(user, collection):
        return []
    documents = list(
        Document.objects.deleted().filter(collection=collection).select_related("deleted_by").order_by("-deleted_at")
    )
    for document in documents:
        document.purge_at = purge_time(document.deleted_at)
    return documents


def document_get_deleted(*, user, pk: int) -> Document:
    """A deleted document the user may restore (an editor of its collection), else 404."""
    try:
        return (
            Document.objects.deleted()
            .select_related("collection")
            .get(pk=pk, collection_id__in=access.collection_ids_with_role(user, Role.EDITOR))
        )
    except (Document.DoesNotExist, ValueError, TypeError):
        raise Http404("No such document.") from None


def collections_deleted(*, user) -> list[Collection]:
    """Deleted collections not yet purged that the user may restore (they owned them), each with
    `purge_at` and `documents_count`."""
    if not user.is_authenticated:
        return []
    collections = (
        Collection.objects.filter(deleted_at__isnull=False)
        .select_related("deleted_by")
        .annotate(documents_count=Count("documents", filter=Q(documents__deleted_at__isnull=True)))
    )
    mine = [c for c in collections.order_by("-deleted_at") if access.can_restore_collection(user, c)]
    for collection in mine:
        collection.purge_at = purge_time(collection.deleted_at)
    return mine


def collection_get_deleted(*, user, pk: int) -> Collection:
    """A deleted collection the user may restore, else 404."""
    collection = Collection.objects.filter(pk=pk, deleted_at__isnull=False).first() if str(pk).isdigit() else None
    if collection is None or not access.can_restore_collection(user, collection):
        raise Http404("No such collection.")
    return collection
