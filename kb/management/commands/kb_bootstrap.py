"""Create the first admin account on a fresh installation (run by `make run`)."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from kb.access import SYSTEM_USERNAME


class Command(BaseCommand):
    help = "Create the admin account if there is none; print its login once (or use KB_ADMIN_PASSWORD)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("KB_ADMIN_USERNAME", "admin"))

    def handle(self, *args, username: str, **options):
        User = get_user_model()  # noqa: N806
        if User.objects.filter(is_superuser=True).exclude(username=SYSTEM_USERNAME).exists():
            return
        password = os.environ.get("KB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        shown = "(from KB_ADMIN_PASSWORD)" if os.environ.get("KB_ADMIN_PASSWORD") else password
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the admin account. Sign in as {username!r} with password {shown}\n"
                "This is shown once; change it with: python manage.py changepassword " + username
            )
        )
