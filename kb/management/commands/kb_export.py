"""Write the whole knowledge base to one archive: `kb_export PATH` (docs/deployment.md, "Backup and restore")."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kb import access
from kb.services.backup import BackupError, backup_export


class Command(BaseCommand):
    help = (
        "Write the whole knowledge base to a new archive at PATH (a .tar; .tar.gz or .tgz compresses it): "
        "users and groups with their password hashes, collections and grants, documents with their uploaded "
        "files and chunks (vectors included), sources, conversations, API tokens and the audit log, from one "
        "consistent snapshot while kb keeps running. Restore it with kb_import. Sources' credentials stay "
        "encrypted: the installation that imports it needs the same KB_CREDENTIALS_KEY (or, when that is unset, "
        "the same DJANGO_SECRET_KEY). The archive holds password hashes and API token digests: keep it as "
        "safe as the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, metavar="PATH", help="the archive to create (must not exist)")

    def handle(self, *args, path: Path, **options) -> None:
        try:
            summary = backup_export(actor=access.system_user(), path=path)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        for name in summary.missing_files:
            self.stderr.write(
                f"Warning: the uploaded file {name} is missing from the uploads folder; not in the archive."
            )
        rows = ", ".join(f"{count} {label}" for label, count in summary.counts.items() if count)
        self.stdout.write(
            f"Wrote {summary.path} ({summary.bytes / 1e6:.1f} MB): {rows or 'no rows'}; {summary.files} files."
        )
