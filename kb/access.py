"""Who may do what. The one module that decides permissions; everything else asks it.

Roles rank viewer < editor < owner; a user's role on a collection is the highest of
their direct grant and the grants of their groups. Superusers and staff administer
everything. A collection marked open to all is readable (as a viewer) by every signed-in,
active user. Anonymous and inactive users may read nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet

from kb.models import ROLE_RANK, Collection, CollectionGrant, Role


def _is_admin(user) -> bool:
    return bool(user.is_active and (user.is_superuser or user.is_staff))


def _grants_of(user) -> QuerySet[CollectionGrant]:
    return CollectionGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))


# What one request has already worked out about access: a question asks "which collections may
# this user read?" half a dozen times (the collection, retrieval's two legs, the models of the
# collections searched, the sources, the page), each a subquery to build and run again. Set
# by kb.middleware.AccessCacheMiddleware for the length of a request, so nothing outlives it;
# services that change grants or collections clear it (forget). Outside a request (tasks,
# commands, tests calling services) there is no cache.
_request_cache: ContextVar[dict | None] = ContextVar("kb_access_request_cache", default=None)


@contextmanager
def request_cache() -> Iterator[None]:
    token = _request_cache.set({})
    try:
        yield
    finally:
        _request_cache.reset(token)


def forget() -> None:
    """Drop what this request has cached: grants or collections just changed."""
    cache = _request_cache.get()
    if cache is not None:
        cache.clear()


def _cached(key, compute):
    cache = _request_cache.get()
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def collection_ids_with_role(user, minimum: Role) -> QuerySet | list[int]:
    """The ids of the collections where the user holds at least `minimum`: a subquery, or within a request a list."""
    if _request_cache.get() is None:
        return _ids_with_role(user, minimum)
    return _cached(
        ("ids", user.pk, user.is_active, Role(minimum)),
        lambda: list(Collection.objects.filter(pk__in=_ids_with_role(user, minimum)).values_list("pk", flat=True)),
    )


def _ids_with_role(user, minimum: Role) -> QuerySet:
    if not user.is_authenticated or not user.is_active:
        return Collection.objects.none().values("pk")
    alive = Collection.objects.filter(deleted_at__isnull=True)  # a deleted collection is no one's to read
    if _is_admin(user):
        return alive.values("pk")
    roles = [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[minimum]]
    granted = _grants_of(user).filter(role__in=roles).values("collection_id")
    if ROLE_RANK[Role(minimum)] > ROLE_RANK[Role.VIEWER]:
        return alive.filter(pk__in=granted).values("pk")
    return alive.filter(Q(pk__in=granted) | Q(open_to_all=True)).values("pk")


def readable_collection_ids(user) -> QuerySet:
    return collection_ids_with_role(user, Role.VIEWER)


def role_for(user, collection: Collection) -> Role | None:
    """The user's effective role on a collection, or None."""
    return _cached(
        ("role", user.pk, collection.pk, collection.open_to_all, collection.deleted_at is None),
        lambda: _role_for(user, collection),
    )


def _role_for(user, collection: Collection, *, deleted: bool = False) -> Role | None:
    if not user.is_authenticated or not user.is_active or (collection.deleted_at is not None and not deleted):
        return None
    if _is_admin(user):
        return Role.OWNER
    roles = [Role(r) for r in _grants_of(user).filter(collection=collection).values_list("role", flat=True)]
    if collection.open_to_all:
        roles.append(Role.VIEWER)
    return max(roles, key=ROLE_RANK.__getitem__, default=None)


def can_read(user, collection: Collection) -> bool:
    if _request_cache.get() is not None:  # the readable ids are most likely worked out already
        return collection.pk in collection_ids_with_role(user, Role.VIEWER)
    return role_for(user, collection) is not None


def can_edit(user, collection: Collection) -> bool:
    role = role_for(user, collection)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[Role.EDITOR]


def can_manage(user, collection: Collection) -> bool:
    return role_for(user, collection) == Role.OWNER


def can_restore_collection(user, collection: Collection) -> bool:
    """A deleted collection is restored by those who owned it (and staff), until it is purged."""
    return collection.deleted_at is not None and _role_for(user, collection, deleted=True) == Role.OWNER


def can_purge(user) -> bool:
    """Purging what was deleted once its grace period is over: the system's job (celery beat)."""
    return _is_admin(user)


def can_create_collection(user) -> bool:
    return _is_admin(user)


def can_view_audit(user) -> bool:
    return _is_admin(user)


def can_use_conversation(user, conversation) -> bool:
    """Conversations are private: only their owner asks, stops or regenerates in one."""
    return bool(user.is_authenticated and conversation.user_id == user.pk)


def can_use_token(user, token) -> bool:
    """A personal API token is its owner's alone to revoke."""
    return bool(user.is_authenticated and token.user_id == user.pk)


def can_use_admin_pages(user) -> bool:
    """The Django admin: staff administer every collection there."""
    return _is_admin(user)


def can_read_all_conversations(user) -> bool:
    """Conversations are private: only superusers read other people's, in the admin."""
    return bool(user.is_active and user.is_superuser)


@dataclass
class AccessLine:
    """One user's effective role on a collection, and every reason they hold it."""

    user: object
    role: Role
    reasons: list[str] = field(default_factory=list)


def collection_access(collection: Collection) -> list[AccessLine]:
    """Who can reach a collection and why: direct grants, groups, staff; best role first.

    Everyone else's access when the collection is open to all is stated by the caller
    (it is not a list of people).
    """
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806
    lines: dict[int, AccessLine] = {}

    def add(user, role: Role, reason: str) -> None:
        line = lines.setdefault(user.pk, AccessLine(user=user, role=role))
        if ROLE_RANK[role] > ROLE_RANK[line.role]:
            line.role = role
        line.reasons.append(reason)

    grants = collection.grants.select_related("user", "group").order_by("pk")
    for grant in grants:
        role = Role(grant.role)
        if grant.user_id:
            if grant.user.is_active:
                add(grant.user, role, f"direct grant: {role.label.lower()}")
        else:
            for member in grant.group.user_set.filter(is_active=True):
                add(member, role, f"via group {grant.group.name}: {role.label.lower()}")
    for admin in User.objects.filter(is_active=True).filter(Q(is_staff=True) | Q(is_superuser=True)):
        if admin.username != SYSTEM_USERNAME:
            add(admin, Role.OWNER, "site staff")
    return sorted(lines.values(), key=lambda line: (-ROLE_RANK[line.role], line.user.get_username()))


SYSTEM_USERNAME = "kb-system"


def system_user():
    """The operator's identity for the command line: may do everything, cannot sign in."""
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806
    user, created = User.objects.get_or_create(
        username=SYSTEM_USERNAME, defaults={"is_superuser": True, "is_staff": False, "is_active": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
