"""Single sign-on through OpenID Connect, with the identity provider's groups mapped to kb's.

Only groups named in KB_OIDC_GROUP_MAP are managed: at each sign-in the user joins the
mapped groups their claim lists and leaves the mapped groups it no longer lists. Groups an
administrator gave by hand (not in the map) are left alone. Collections are then granted
to groups as usual, so access follows the identity provider.
"""

from __future__ import annotations

from django.conf import settings
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from kb import access
from kb.services.people import user_groups_sync


def mapped_groups(claims: dict) -> tuple[set[str], set[str]]:
    """(the kb groups these claims put the user in, every kb group the map manages)."""
    mapping: dict[str, str] = settings.KB_OIDC_GROUP_MAP
    values = claims.get(settings.KB_OIDC_GROUPS_CLAIM) or []
    if isinstance(values, str):
        values = [values]
    return {mapping[v] for v in values if v in mapping}, set(mapping.values())


def sync_groups(user, claims: dict) -> None:
    """Bring the user's mapped groups in line with the claims, as the system user (audited)."""
    wanted, managed = mapped_groups(claims)
    user_groups_sync(actor=access.system_user(), user=user, wanted=wanted, managed=managed)


class GroupMappingOIDCBackend(OIDCAuthenticationBackend):
    def create_user(self, claims):
        user = super().create_user(claims)
        # A readable name when it is free; never one that already belongs to someone else.
        wanted = (claims.get("preferred_username") or "")[:150]
        if wanted and not type(user).objects.filter(username=wanted).exists():
            user.username = wanted
            user.save(update_fields=["username"])
        sync_groups(user, claims)
        return user

    def update_user(self, user, claims):
        sync_groups(user, claims)
        return user
