"""Sources' credentials, encrypted at rest.

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) rather than anything of kb's own:
authenticated, and MultiFernet rotates keys (KB_CREDENTIALS_KEY lists the new key first; old
ones still decrypt until the values are saved again).
"""

from __future__ import annotations

import base64
import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


class CredentialsUnreadable(Exception):
    """Stored credentials could not be decrypted (the key changed): enter them again."""


def _fernet() -> MultiFernet:
    keys = [k.strip() for k in settings.KB_CREDENTIALS_KEY if k.strip()]
    if not keys:
        # No key of its own: one derived from the secret key, so an installation that never
        # set one still keeps credentials encrypted (and must keep DJANGO_SECRET_KEY).
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"kb source credentials").derive(
            settings.SECRET_KEY.encode()
        )
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(k) for k in keys])  # the settings checked each key at start-up


def encrypt(values: dict[str, str]) -> str:
    """The credentials as one encrypted token; "" when there are none."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(values).encode()).decode()


def decrypt(token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise CredentialsUnreadable(
            "The stored credentials cannot be decrypted (KB_CREDENTIALS_KEY changed?); enter them again."
        ) from exc
