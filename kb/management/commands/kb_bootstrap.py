"""Create the first admin account on a fresh installation (run by `make run` and compose's migrate service)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from kb.access import SYSTEM_USERNAME

# Read by bin/ready.py, which prints the login once the web app answers (make run).
LOGIN_FILE = "first-admin-login.json"


def login_file() -> Path:
    return Path(settings.VAR_DIR) / LOGIN_FILE


def _keep_login(path: Path, username: str, password: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was already there with other rights
    with os.fdopen(fd, "w") as f:
        json.dump({"username": username, "password": password, "announced": False}, f)


def _forget_changed_login(path: Path) -> None:
    """Remove the kept first password once it no longer signs the admin in (changed, or the user is gone)."""
    try:
        login = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        path.unlink()
        return
    User = get_user_model()  # noqa: N806
    user = User.objects.filter(username=login.get("username")).first()
    if user is None or not login.get("password") or not user.check_password(login["password"]):
        path.unlink()


class Command(BaseCommand):
    help = (
        "Create the admin account if there is none and print its login once (or use KB_ADMIN_PASSWORD). "
        "With --defer-password the login is kept in var/ (mode 0600) for bin/ready.py to print "
        "once the web app answers."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("KB_ADMIN_USERNAME", "admin"))
        parser.add_argument(
            "--defer-password",
            action="store_true",
            help=f"keep the new password in VAR_DIR/{LOGIN_FILE} instead of printing it (make run)",
        )

    def handle(self, *args, username: str, defer_password: bool, **options):
        path = login_file()
        _forget_changed_login(path)
        User = get_user_model()  # noqa: N806
        if User.objects.filter(is_superuser=True).exclude(username=SYSTEM_USERNAME).exists():
            return
        from_env = bool(os.environ.get("KB_ADMIN_PASSWORD"))
        password = os.environ.get("KB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        if defer_password:
            _keep_login(path, username, None if from_env else password)
            self.stdout.write(f"Created the admin account {username!r}; its password is shown once kb is ready.")
            return
        shown = "(from KB_ADMIN_PASSWORD)" if from_env else password
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the admin account. Sign in as {username!r} with password {shown}\n"
                "This is shown once; change it with: python manage.py changepassword " + username
            )
        )
