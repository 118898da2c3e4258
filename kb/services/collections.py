"""Collections and who may read them: create, update, delete, grant, revoke."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction

from kb import access, selectors
from kb.audit import audit_record
from kb.models import Collection, CollectionGrant, Document, Role


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
