"""People: the user list for staff, one person's page, name suggestions for the grant form,
and what a person can read and why (the "view as this user" check).

Staff see everyone (but kb's own system identity); an owner who is not staff sees only
active people, only by name, and only their access to the collections the owner manages.
Anyone else gets a 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Q, QuerySet
from django.http import Http404

from kb import access
from kb.models import ROLE_RANK, Collection, CollectionGrant, Role

__all__ = [
    "PersonAccess",
    "group_list",
    "people_list",
    "people_may_browse",
    "person_access",
    "person_get",
    "principal_suggestions",
]


def _is_staff(user) -> bool:
    # Staff administer every collection, in kb's pages as in the admin (kb.access).
    return access.can_use_admin_pages(user)


def _managed(user) -> QuerySet:
    return Collection.objects.filter(pk__in=access.collection_ids_with_role(user, Role.OWNER))


def people_may_browse(user) -> bool:
    """Staff, and people who own at least one collection, may look people up by name."""
    return _is_staff(user) or _managed(user).exists()


def _people():
    return get_user_model().objects.exclude(username=access.SYSTEM_USERNAME)


def people_list(*, user, query: str = "", status: str = "") -> QuerySet:
    """Everyone, for staff (else 404): filtered by a search over names and e-mail, and by
    status ("active", "inactive" or anything else for both), with their groups."""
    if not _is_staff(user):
        raise Http404
    people = _people().prefetch_related("groups").order_by("username")
    if query := query.strip():
        people = people.filter(
            Q(username__icontains=query)
            | Q(first_name__icontains=query)
            | Q(last_name__icontains=query)
            | Q(email__icontains=query)
        )
    if status in ("active", "inactive"):
        people = people.filter(is_active=status == "active")
    return people


def person_get(*, user, pk: int, staff_only: bool = False):
    """A person's record: any for staff; an active one for owners (unless `staff_only`); else 404."""
    people = _people()
    if not _is_staff(user):
        if staff_only or not people_may_browse(user):
            raise Http404
        people = people.filter(is_active=True)
    try:
        return people.prefetch_related("groups").get(pk=pk)
    except (ObjectDoesNotExist, ValueError, TypeError):
        raise Http404("No such person.") from None


def group_list(*, user) -> QuerySet:
    """Every group, for staff (else 404)."""
    if not _is_staff(user):
        raise Http404
    return Group.objects.order_by("name")


def principal_suggestions(*, user, query: str, kind: str = "user", limit: int = 10) -> list[tuple[str, str]]:
    """Up to `limit` (value, label) pairs of active users' or groups' names matching `query`:
    for staff and owners of a collection (else 404); names only, nothing more."""
    if not people_may_browse(user):
        raise Http404
    query = query.strip()
    if kind == "group":
        groups = Group.objects.order_by("name")
        if query:
            groups = groups.filter(name__icontains=query)
        return [(name, name) for name in groups.values_list("name", flat=True)[:limit]]
    people = _people().filter(is_active=True).order_by("username")
    if query:
        people = people.filter(
            Q(username__icontains=query) | Q(first_name__icontains=query) | Q(last_name__icontains=query)
        )
    found = people.values_list("username", "first_name", "last_name")[:limit]
    return [(name, " ".join(part for part in (first, last) if part) or name) for name, first, last in found]


@dataclass
class PersonAccess:
    """One collection a person can read: their role and every reason they hold it."""

    collection: Collection
    role: Role
    reasons: list[str] = field(default_factory=list)


def person_access(*, user, person) -> list[PersonAccess]:
    """What `person` can read and why, among the collections `user` manages (all, for staff).

    The rules are kb.access's (a direct grant, a group's grant, open to all, staff); the
    roles agree with access.role_for, which the tests check.
    """
    if not people_may_browse(user):
        raise Http404
    collections = _managed(user).order_by("name")
    if not person.is_active:
        return []
    if person.is_superuser or person.is_staff:
        reason = "superuser: administers everything" if person.is_superuser else "site staff: administers everything"
        return [PersonAccess(collection=c, role=Role.OWNER, reasons=[reason]) for c in collections]
    lines: dict[int, PersonAccess] = {}

    def add(collection: Collection, role: Role, reason: str) -> None:
        line = lines.setdefault(collection.pk, PersonAccess(collection=collection, role=role))
        if ROLE_RANK[role] > ROLE_RANK[line.role]:
            line.role = role
        line.reasons.append(reason)

    grants = (
        CollectionGrant.objects.filter(collection__in=collections)
        .filter(Q(user=person) | Q(group__in=person.groups.all()))
        .select_related("collection", "group")
        .order_by("collection__name", "group__name")
    )
    for grant in grants:
        role = Role(grant.role)
        if grant.group_id:
            add(grant.collection, role, f"through group {grant.group.name}: {role.label.lower()}")
        else:
            add(grant.collection, role, f"direct grant: {role.label.lower()}")
    for collection in collections.filter(open_to_all=True):
        add(collection, Role.VIEWER, "open to all signed-in users: viewer")
    return sorted(lines.values(), key=lambda line: line.collection.name.lower())
