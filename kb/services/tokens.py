"""Personal API tokens: create, revoke, note their use."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from kb import access
from kb.audit import audit_record
from kb.models import ApiToken

TOKEN_PREFIX = "kb_"


@transaction.atomic
def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a personal API token; the raw token is returned here once and never stored."""
    name = name.strip()[:100]
    if not name:
        raise ValidationError("Name the token after what will use it.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], digest=ApiToken.digest_of(raw))
    audit_record(actor=user, action="token.create", target=f"{name} ({token.prefix}…)")
    return token, raw


@transaction.atomic
def api_token_revoke(*, user, token: ApiToken) -> None:
    """Revoke one of the user's tokens; requests with it fail from then on."""
    if not access.can_use_token(user, token):
        raise PermissionError("Not your token.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=user, action="token.revoke", target=f"{token.name} ({token.prefix}…)")


def api_token_touch(*, token: ApiToken) -> None:
    """Note when a token was last used (at most once a minute, to spare the database)."""
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
