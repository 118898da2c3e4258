"""Collections and who may read them: create, update, delete (with undo) and purge, grant, revoke."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from kb import access, selectors
from kb.audit import audit_record
from kb.models import Collection, CollectionGrant, Document, Role, Source


def _require_manage(actor, collection: Collection) -> None:
    if not access.can_manage(actor, collection):
        raise PermissionError("You cannot manage access to this collection.")


def _principal(user, group) -> str:
    return f"user {user.get_username()}" if user is not None else f"group {group.name}"


@transaction.atomic
def collection_create(*, user, name: str, description: str = "", open_to_all: bool = False) -> Collection:
    """Create a collection and make its creator its owner."""
    name = name.strip()
    if problem := selectors.collection_name_problem(name=name):
        raise ValidationError(problem)
    collection = Collection.objects.create(name=name, description=description, created_by=user, open_to_all=open_to_all)
    if user is not None and user.is_authenticated:
        CollectionGrant.objects.create(collection=collection, user=user, role=Role.OWNER)
    access.forget()
    audit_record(actor=user, action="collection.create", collection=collection, target=name)
    return collection


@transaction.atomic
def collection_update(
    *, actor, collection: Collection, name: str, description: str = "", open_to_all: bool = False,
    stale_after_days: int | None = None,
) -> Collection:  # fmt: skip
    """Rename a collection, change its description, whether every signed-in user reads it, and
    after how many days unchanged its passages are flagged as possibly out of date."""
    _require_manage(actor, collection)
    name = name.strip()
    if problem := selectors.collection_name_problem(name=name, exclude_pk=collection.pk):
        raise ValidationError(problem)
    changes = {}
    if name != collection.name:
        changes["name"] = [collection.name, name]
    if open_to_all != collection.open_to_all:
        changes["open_to_all"] = [collection.open_to_all, open_to_all]
    if stale_after_days != collection.stale_after_days:
        changes["stale_after_days"] = [collection.stale_after_days, stale_after_days]
    collection.name, collection.description, collection.open_to_all = name, description, open_to_all
    collection.stale_after_days = stale_after_days
    collection.save(update_fields=["name", "description", "open_to_all", "stale_after_days"])
    if changes:
        access.forget()
        audit_record(actor=actor, action="collection.update", collection=collection, target=name, **changes)
    return collection


@transaction.atomic
def collection_delete(*, actor, collection: Collection) -> dict:
    """Delete a collection: gone at once from every list, search and answer, for everyone.

    It stays, hidden, for KB_DELETE_GRACE_SECONDS so that its owners can restore it
    (collection_restore); then collections_purge_expired removes it with its documents,
    chunks and stored files. Its sources do not sync meanwhile. Returns what went:
    {"documents": n, "passages": n}.
    """
    _require_manage(actor, collection)
    impact = selectors.collection_delete_impact(user=actor, collection=collection)
    collection.deleted_at = timezone.now()
    collection.deleted_by = actor if getattr(actor, "is_authenticated", False) else None
    Collection.objects.filter(pk=collection.pk).update(
        deleted_at=collection.deleted_at, deleted_by=collection.deleted_by
    )
    Source.objects.filter(collection=collection).update(next_run_at=None)
    audit_record(
        actor=actor, action="collection.delete", collection=collection, target=collection.name,
        documents=impact.documents, passages=impact.passages,
    )  # fmt: skip
    access.forget()
    return {"documents": impact.documents, "passages": impact.passages}


@transaction.atomic
def collection_restore(*, actor, collection: Collection) -> Collection:
    """Undo a collection's delete (not yet purged): it is back as it was, and its sources sync again."""
    if not access.can_restore_collection(actor, collection):
        raise PermissionError("You cannot restore this collection.")
    now = timezone.now()
    Collection.objects.filter(pk=collection.pk).update(deleted_at=None, deleted_by=None)
    collection.deleted_at = collection.deleted_by = None
    Source.objects.filter(collection=collection, every_minutes__isnull=False).update(next_run_at=now)
    audit_record(actor=actor, action="collection.restore", collection=collection, target=collection.name)
    access.forget()
    return collection


def _purge(collection: Collection) -> None:
    names = list(Document.objects.filter(collection=collection).values_list("file", flat=True))
    collection.delete()
    transaction.on_commit(lambda: [default_storage.delete(n) for n in names if n])


@transaction.atomic
def collection_purge(*, actor, collection: Collection) -> None:
    """Remove a deleted collection for good, now: its documents, chunks and stored files."""
    if collection.deleted_at is None:
        raise ValidationError("Only a deleted collection can be purged.")
    if not (access.can_restore_collection(actor, collection) or access.can_purge(actor)):
        raise PermissionError("You cannot purge this collection.")
    audit_record(actor=actor, action="collection.purge", collection=collection, target=collection.name)
    _purge(collection)


def collections_purge_expired(*, actor, now=None) -> int:
    """Purge the collections deleted longer than KB_DELETE_GRACE_SECONDS ago; how many went.

    Run by celery beat (ingestion.tasks.purge_deleted); running it twice purges nothing twice.
    """
    if not access.can_purge(actor):
        raise PermissionError("Only the system purges deleted collections.")
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.KB_DELETE_GRACE_SECONDS)
    purged = 0
    for pk in Collection.objects.filter(deleted_at__lt=cutoff).values_list("pk", flat=True):
        with transaction.atomic():  # one at a time: a large collection's cascade is its own transaction
            collection = Collection.objects.select_for_update(skip_locked=True).filter(pk=pk, deleted_at__lt=cutoff)
            collection = collection.first()
            if collection is None:
                continue
            audit_record(actor=actor, action="collection.purge", collection=collection, target=collection.name)
            _purge(collection)
            purged += 1
    return purged


@transaction.atomic
def collection_grant(*, actor, collection: Collection, role: Role | str, user=None, group=None) -> CollectionGrant:
    """Give a user or a group a role on a collection (replacing their previous role); the actor must manage it."""
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
def collection_revoke(*, actor, collection: Collection, user=None, group=None) -> None:
    """Remove a user's or a group's grant on a collection."""
    _require_manage(actor, collection)
    deleted, _ = CollectionGrant.objects.filter(collection=collection, user=user, group=group).delete()
    if deleted:
        access.forget()
        audit_record(actor=actor, action="access.revoke", collection=collection, target=_principal(user, group))
