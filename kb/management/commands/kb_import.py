"""Restore an archive written by kb_export: `kb_import PATH` (docs/deployment.md, "Backup and restore")."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kb.services.backup import BackupError, backup_import


class Command(BaseCommand):
    help = (
        "Restore an archive written by kb_export into an empty database migrated to the same state "
        "(create it, run `python manage.py migrate`, then kb_import; do not run kb_bootstrap first). "
        "All or nothing: on any error no row stays and the uploaded files written are removed again. "
        "Sources' credentials stay encrypted: set the same KB_CREDENTIALS_KEY (or, when that is unset, the "
        "same DJANGO_SECRET_KEY) as the installation that exported; the import checks it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, metavar="PATH", help="the archive kb_export wrote")

    def handle(self, *args, path: Path, **options) -> None:
        try:
            summary = backup_import(path=path)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        rows = ", ".join(f"{count} {label}" for label, count in summary.counts.items() if count)
        self.stdout.write(f"Imported {summary.path}: {rows or 'no rows'}; {summary.files} files.")
        if summary.missing_files:
            self.stdout.write(
                f"{len(summary.missing_files)} document file(s) were already missing when the archive was made "
                f"(first: {summary.missing_files[0]}); those documents cannot be downloaded."
            )
