"""What kb's commands share: who they act as and which collections they name."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.http import Http404

from kb import access, selectors


def actor_and_collections(*, username: str | None, names: list[str]):
    """The user a command acts as (--user, else the operator) and the named collections they may read."""
    if username:
        actor = get_user_model().objects.filter(username=username, is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user named {username!r}.")
    else:
        actor = access.system_user()
    try:
        collections = [selectors.collection_get_by_name(user=actor, name=name) for name in names]
    except Http404 as exc:
        raise CommandError(str(exc)) from None
    return actor, collections
