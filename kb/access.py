"""Who may do what. The one module that decides permissions; everything else asks it.

Roles rank viewer < editor < owner; a user's role on a collection is the highest of
their direct grant and the grants of their groups. Superusers and staff administer
everything. Anonymous users may read nothing.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from kb.models import ROLE_RANK, Collection, CollectionGrant, Role


def _is_admin(user) -> bool:
    return bool(user.is_active and (user.is_superuser or user.is_staff))


def _grants_of(user) -> QuerySet[CollectionGrant]:
    return CollectionGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))


def collection_ids_with_role(user, minimum: Role) -> QuerySet:
    """A subquery of the ids of the collections where the user holds at least `minimum`."""
    if not user.is_authenticated or not user.is_active:
        return Collection.objects.none().values("pk")
    if _is_admin(user):
        return Collection.objects.values("pk")
    roles = [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[minimum]]
    return _grants_of(user).filter(role__in=roles).values("collection_id")


def readable_collection_ids(user) -> QuerySet:
    return collection_ids_with_role(user, Role.VIEWER)


def role_for(user, collection: Collection) -> Role | None:
    """The user's effective role on a collection, or None."""
    if not user.is_authenticated or not user.is_active:
        return None
    if _is_admin(user):
        return Role.OWNER
    roles = _grants_of(user).filter(collection=collection).values_list("role", flat=True)
    return max((Role(r) for r in roles), key=ROLE_RANK.__getitem__, default=None)


def can_read(user, collection: Collection) -> bool:
    return role_for(user, collection) is not None


def can_edit(user, collection: Collection) -> bool:
    role = role_for(user, collection)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[Role.EDITOR]


def can_manage(user, collection: Collection) -> bool:
    return role_for(user, collection) == Role.OWNER


def can_create_collection(user) -> bool:
    return _is_admin(user)


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
