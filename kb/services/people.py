"""People: group membership that an identity provider decides (single sign-on)."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import transaction

from kb import access
from kb.audit import audit_record


@transaction.atomic
def user_groups_sync(*, actor, user, wanted: set[str], managed: set[str]) -> None:
    """Put the user in the `wanted` groups and out of the other `managed` ones; others stay as they are.

    Groups an administrator gave by hand (not in `managed`) are left alone. Each join and
    leave is audited, and the request's access cache forgotten: a group can carry grants.
    """
    for name in wanted:
        Group.objects.get_or_create(name=name)
    current = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
    leave, join = current - wanted, wanted - current
    if leave:
        user.groups.remove(*Group.objects.filter(name__in=leave))
    if join:
        user.groups.add(*Group.objects.filter(name__in=join))
    for action, names in (("group.join", join), ("group.leave", leave)):
        for name in sorted(names):
            audit_record(actor=actor, action=action, target=f"user {user.get_username()}", group=name, via="oidc")
    if leave or join:
        access.forget()
