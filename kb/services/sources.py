"""Sources that sync: adding and removing them, and each run that reads one into its collection.

A run lists the pages at the source, fetches only those whose version marker changed, stores
them through the upload path (kb.services.documents: the same limits, hashing and atomic
replacement), removes documents whose pages are gone, and queues the rest for processing as
one batch. Runs are resumable: every stored page is committed on its own, so a run taken over
after its worker died finds those pages unchanged and goes on from there.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ingestion import queue
from ingestion.connectors import KINDS, Limits, Listing, SourceConfig, SourceError, open_connector, selected
from kb import access, credentials
from kb.audit import audit_record
from kb.models import BatchSummary, Collection, Document, InvalidTransition, Source, SourceRun, UploadBatch
from kb.services.documents import PageOrigin, document_relocate, document_upload, documents_remove

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10  # pages stored between two heartbeats (and summary saves) of a run
_REDO = (Document.Status.FAILED, Document.Status.CANCELLED)


def location_for_display(location: str) -> str:
    """The location without any user:password@ part, for pages, logs and the audit trail."""
    parts = urlsplit(location)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return location


def _limits() -> Limits:
    return Limits(
        max_bytes=settings.KB_MAX_UPLOAD_MB * 1024 * 1024,
        timeout=settings.KB_SOURCE_TIMEOUT,
        allowed_hosts=frozenset(h.strip().lower() for h in settings.KB_SOURCE_ALLOWED_HOSTS if h.strip()),
        roots=tuple(Path(r).expanduser() for r in settings.KB_SOURCE_ROOTS if r.strip()),
        max_pages=settings.KB_SOURCE_MAX_PAGES,
        delay=settings.KB_SOURCE_DELAY,
    )


def _cache_dir(source: Source) -> str:
    return str(Path(settings.MEDIA_ROOT) / "sources" / f"{source.pk}")


def source_config(source: Source) -> SourceConfig:
    """What the connector needs: the source's settings, decrypted credentials and kb's limits."""
    options = dict(source.options or {})
    if source.kind == Source.Kind.GIT:
        options["cache_dir"] = _cache_dir(source)
    return SourceConfig(
        kind=source.kind, location=source.location, branch=source.branch,
        include=tuple(source.include or ()), exclude=tuple(source.exclude or ()), options=options,
        credentials=credentials.decrypt(source.credentials), limits=_limits(),
    )  # fmt: skip


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _default_name(kind: str, location: str, options: dict) -> str:
    if kind == Source.Kind.CONFLUENCE and options.get("space"):
        return str(options["space"])
    parts = urlsplit(location)
    if kind in (Source.Kind.WEB, Source.Kind.MEDIAWIKI) and parts.hostname:
        return parts.hostname
    tail = location.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail.removesuffix(".git") or kind


def _unique_name(collection: Collection, wanted: str) -> str:
    base = _UNSAFE_NAME.sub("-", wanted).strip("-.")[:80] or "source"
    name, n = base, 1
    while Source.objects.filter(collection=collection, name=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _validate(kind: str, location: str, options: dict) -> None:
    if kind not in KINDS:
        raise ValidationError(f"Unknown source kind {kind!r}; kb knows {', '.join(KINDS)}.")
    if not location.strip():
        raise ValidationError("Say where the source is: a URL, a repository or a folder.")
    scheme = urlsplit(location).scheme.lower()
    if kind in (Source.Kind.WEB, Source.Kind.CONFLUENCE, Source.Kind.MEDIAWIKI) and scheme not in ("http", "https"):
        raise ValidationError(
            f"A {kind} source needs an http:// or https:// address, not {location_for_display(location)}."
        )
    if kind == Source.Kind.CONFLUENCE and not str(options.get("space", "")).strip():
        raise ValidationError("A Confluence source needs the key of the space to read.")
    if kind == Source.Kind.GIT and scheme in ("file", "ext"):
        raise ValidationError("A git source is a remote repository (https, ssh) or a path under KB_SOURCE_ROOTS.")
    if kind == Source.Kind.FOLDER or (kind == Source.Kind.GIT and not scheme and "@" not in location):
        _check_root(location)


def _check_root(location: str) -> None:
    roots = _limits().roots
    target = Path(location).expanduser().resolve()
    if not any(target == r.resolve() or r.resolve() in target.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots) or "none are set"
        raise ValidationError(f"{location} is outside the folders kb may read (KB_SOURCE_ROOTS: {allowed}).")


@transaction.atomic
def source_add(
    *, user, collection: Collection, kind: str, location: str, name: str = "", branch: str = "",
    include: Iterable[str] = (), exclude: Iterable[str] = (), options: dict | None = None,
    secret: dict[str, str] | None = None, every_minutes: int | None = None, sync: bool = True,
) -> Source:  # fmt: skip
    """Add a source to a collection; its first sync is queued at once (sync=False: not)."""
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot add sources to this collection.")
    options = {k: v for k, v in (options or {}).items() if v not in (None, "", [])}
    location = location.strip()
    _validate(kind, location, options)
    if every_minutes is not None and every_minutes < 1:
        raise ValidationError("A schedule is a number of minutes, at least 1.")
    source = Source.objects.create(
        collection=collection, kind=kind, location=location, branch=branch.strip(),
        name=_unique_name(collection, name.strip() or _default_name(kind, location, options)),
        include=[p for p in include if p.strip()], exclude=[p for p in exclude if p.strip()], options=options,
        credentials=credentials.encrypt(secret or {}), every_minutes=every_minutes,
        next_run_at=timezone.now() + timedelta(minutes=every_minutes) if every_minutes else None,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )  # fmt: skip
    audit_record(
        actor=user, action="source.add", collection=collection, target=source.name, kind=kind,
        location=location_for_display(location), every_minutes=every_minutes,
    )  # fmt: skip
    if sync:
        queue.sync_source(source.pk, SourceRun.Trigger.MANUAL)
    return source


@transaction.atomic
def source_remove(*, user, source: Source, keep_documents: bool = False) -> int:
    """Remove a source; its documents go too unless kept (then they stay, as if uploaded). Returns how many went."""
    if not access.can_edit(user, source.collection):
        raise PermissionError("You cannot remove sources of this collection.")
    removed = 0
    if not keep_documents:
        removed = len(documents_remove(user=user, collection=source.collection, documents=source.documents.all()))
    audit_record(
        actor=user, action="source.remove", collection=source.collection, target=source.name,
        documents_removed=removed, kept=keep_documents,
    )  # fmt: skip
    source.delete()
    return removed


def source_sync_request(*, user, source: Source, trigger: str = SourceRun.Trigger.MANUAL) -> bool:
    """Queue a run of the source now (an editor's Sync now); False when one is already running."""
    if not access.can_edit(user, source.collection):
        raise PermissionError("You cannot sync sources of this collection.")
    if _running_fresh(source):
        return False
    with transaction.atomic():
        audit_record(actor=user, action="source.sync", collection=source.collection, target=source.name)
        queue.sync_source(source.pk, trigger)
    return True


def _running_fresh(source: Source) -> bool:
    cutoff = timezone.now() - timedelta(seconds=settings.KB_SOURCE_STALE_SECONDS)
    return source.runs.running().filter(heartbeat_at__gte=cutoff).exists()


def sources_due(*, now=None) -> list[int]:
    """Sources whose scheduled time has come (their next run moved on), and those whose run was abandoned.

    Called by celery beat; the caller queues a run for each id returned.
    """
    now = now or timezone.now()
    due: list[int] = []
    with transaction.atomic():
        for source in Source.objects.select_for_update(skip_locked=True).filter(next_run_at__lte=now):
            source.next_run_at = now + timedelta(minutes=source.every_minutes or 0) if source.every_minutes else None
            source.save(update_fields=["next_run_at"])
            if not _running_fresh(source):
                due.append(source.pk)
    stale = timezone.now() - timedelta(seconds=settings.KB_SOURCE_STALE_SECONDS)
    abandoned = SourceRun.objects.running().filter(heartbeat_at__lt=stale).values_list("source_id", flat=True)
    return sorted(set(due) | set(abandoned))


def _run_start(source: Source, trigger: str, user) -> SourceRun | None:
    """Open a run of the source, or take over one whose worker went silent; None if one is alive."""
    with transaction.atomic():
        Source.objects.select_for_update().get(pk=source.pk)  # one starter at a time per source
        current = source.runs.running().first()
        if current is not None:
            stale = timezone.now() - timedelta(seconds=settings.KB_SOURCE_STALE_SECONDS)
            if current.heartbeat_at >= stale:
                return None
            current.attempts += 1
            current.heartbeat_at = timezone.now()
            current.save(update_fields=["attempts", "heartbeat_at"])
            logger.warning("source %s: taking over run %s (attempt %s)", source.pk, current.pk, current.attempts)
            return current
        batch = UploadBatch.objects.create(
            collection=source.collection, created_by=user if getattr(user, "is_authenticated", False) else None,
            label=f"sync of {source.name}"[:300], summary=BatchSummary().as_json(),
        )  # fmt: skip
        try:
            with transaction.atomic():
                return SourceRun.objects.create(source=source, batch=batch, trigger=trigger)
        except IntegrityError:  # another starter won the race (source_one_running_run)
            return None


def source_sync(*, user, source_id: int, trigger: str = SourceRun.Trigger.SCHEDULE, enqueue: bool = True):
    """Run one sync of a source: list, fetch what changed, store, remove what vanished; the run, or None.

    None when the source is gone or a live run of it is under way. With enqueue=False the
    documents are left queued for the caller to process (kb_source sync does it inline).
    """
    source = Source.objects.select_related("collection").filter(pk=source_id).first()
    if source is None:
        return None
    if not access.can_edit(user, source.collection):
        raise PermissionError("You cannot sync sources of this collection.")
    run = _run_start(source, trigger, user)
    if run is None:
        return None
    summary = BatchSummary.from_json(run.summary)
    try:
        config = source_config(source)
        connector = open_connector(config)
        try:
            with _heartbeat(run.pk):
                known = _known(source)
                refs = {p: d.source_ref for p, d in known.items()}
                listing = connector.list_pages(known=refs, cursor=source.cursor)
                _store(user, source, run, connector, listing, known, summary, enqueue=enqueue)
        finally:
            connector.close()
    except (SourceError, credentials.CredentialsUnreadable) as exc:
        return _finish(source, run, summary, error=str(exc))
    source.cursor = listing.cursor
    source.save(update_fields=["cursor"])
    return _finish(source, run, summary)


@contextmanager
def _heartbeat(run_id: int):
    """Keep the run's heartbeat fresh while it works, however long one step takes.

    A thread with its own database connection: listing a large site with a politeness delay
    blocks for many minutes, and a run silent for KB_SOURCE_STALE_SECONDS would be taken over.
    """
    every = max(1.0, min(60.0, settings.KB_SOURCE_STALE_SECONDS / 4))
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                SourceRun.objects.running().filter(pk=run_id).update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"source-run-{run_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


def _known(source: Source) -> dict[str, Document]:
    prefix = f"{source.name}/"
    return {d.source_path.removeprefix(prefix): d for d in source.documents.all()}


def _store(user, source, run, connector, listing: Listing, known: dict, summary: BatchSummary, *, enqueue: bool):
    prefix = f"{source.name}/"
    pages = [p for p in listing.pages if selected(p.path, tuple(source.include), tuple(source.exclude))]
    listed = {p.path for p in pages}
    failed_paths = {where for where, _ in listing.failures}
    for where, reason in listing.failures:
        summary.refuse(where, reason)
    # Documents whose pages are gone; a page that failed this time is not gone, and an
    # incomplete listing (a budget reached, a part unreadable) proves nothing about the rest.
    vanished = {}
    if listing.complete:
        vanished = {p: d for p, d in known.items() if p not in listed and p not in failed_paths}
    by_hash = {d.content_hash: d for d in vanished.values()}
    to_process: list[int] = []
    seen_unchanged: list[int] = []
    for n, page in enumerate(pages, 1):
        document = known.get(page.path)
        origin = PageOrigin(source=source, ref=page.ref, url=page.url, modified=page.modified, title=page.title)
        if document is not None and document.source_ref == page.ref and document.status not in _REDO:
            seen_unchanged.append(document.pk)
            if document.url != page.url or document.source_modified != page.modified:
                Document.objects.filter(pk=document.pk).update(url=page.url[:2000], source_modified=page.modified)
            summary.count("unchanged")
        else:
            try:
                data = connector.fetch(page)
                renamed = by_hash.pop(hashlib.sha256(data).hexdigest(), None) if document is None else None
                if renamed is not None and renamed.status not in _REDO:
                    old = renamed.source_path
                    document_relocate(user=user, document=renamed, source_path=prefix + page.path, origin=origin)
                    vanished = {p: d for p, d in vanished.items() if d.pk != renamed.pk}
                    summary.count("updated")
                    run.summary.setdefault("renamed", []).append({"from": old, "to": prefix + page.path})
                else:
                    outcome = document_upload(
                        user=user, collection=source.collection, file=io.BytesIO(data),
                        source_path=prefix + page.path, enqueue=False, batch=run.batch, origin=origin,
                    )  # fmt: skip
                    summary.count(outcome.outcome)
                    if outcome.outcome != "unchanged":
                        to_process.append(outcome.document.pk)
            except (SourceError, ValidationError) as exc:
                reason = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
                summary.refuse(prefix + page.path, reason)
        if len(to_process) >= settings.KB_INGEST_GROUP and enqueue:
            _queue(to_process)
            to_process = []
        if n % HEARTBEAT_EVERY == 0:
            _beat(run, summary)
    Document.objects.filter(pk__in=seen_unchanged).update(seen_at=timezone.now())
    if enqueue:
        _queue(to_process)
    if vanished:
        removed = documents_remove(
            user=user,
            collection=source.collection,
            documents=Document.objects.filter(pk__in=[d.pk for d in vanished.values()]),
        )
        summary.removed += len(removed)
        summary.removed_paths.extend(removed)


def _queue(ids: list[int]) -> None:
    if ids:
        with transaction.atomic():
            queue.ingest_group(ids)


def _beat(run: SourceRun, summary: BatchSummary) -> None:
    data = {**run.summary, **summary.as_json()}
    SourceRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now(), summary=data)


def _finish(source: Source, run: SourceRun, summary: BatchSummary, *, error: str = "") -> SourceRun:
    data = {**run.summary, **summary.as_json()}
    if run.batch_id:
        UploadBatch.objects.filter(pk=run.batch_id).update(summary=summary.as_json())
    if error:
        logger.warning("source %s (%s): sync failed: %s", source.pk, source.name, error)
    try:
        if error:
            run.move(SourceRun.Status.FAILED, summary=data, error=error[:2000])
        else:
            run.move(SourceRun.Status.DONE, summary=data)
    except InvalidTransition:
        # A worker that stalled past KB_SOURCE_STALE_SECONDS and woke up: another attempt took
        # the run over and ended it. What this one stored is kept; the run says what that one found.
        logger.warning("source %s: run %s was finished by another attempt", source.pk, run.pk)
        run.refresh_from_db()
    return run
