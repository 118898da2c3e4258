"""Ingest files, folders and ZIP archives into a collection, through the workers or inline."""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from ingestion.status import documents_recover_stale
from kb import access, selectors
from kb.management.cli import process_inline
from kb.models import FINISHED
from kb.services.collections import collection_create
from kb.services.documents import batch_add_file, batch_create


def _walk(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, source path) pairs: a file by its name, a folder's files by their path inside it."""
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                found.append((file, rel.as_posix()))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise CommandError(f"{raw}: no such file or folder.")
    return found


class Command(BaseCommand):
    help = (
        "Ingest files, folders (recursively) and ZIP archives of pages into a collection. Uploading an "
        "archive again syncs it: new pages are added, changed ones replaced, vanished ones removed."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--collection", required=True, metavar="NAME")
        parser.add_argument("--create", action="store_true", help="create the collection if it does not exist")
        parser.add_argument("--inline", action="store_true", help="process here, without Celery or Redis")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")
        parser.add_argument("--timeout", type=float, default=0, help="seconds to wait for the workers (0: forever)")

    def handle(self, *args, paths, collection, create, inline, json: bool, timeout: float, **options):
        operator = access.system_user()
        target = selectors.collection_list(user=operator).filter(name=collection).first()
        if target is None:
            if not create:
                raise CommandError(f"No collection named {collection!r}; add --create to make it.")
            target = collection_create(user=operator, name=collection)
        files = _walk(paths)
        quiet = json or options["verbosity"] == 0
        label = files[0][1] if len(files) == 1 else f"kb_ingest: {len(files)} files"
        batch = batch_create(user=operator, collection=target, label=label)
        errors: list[dict] = []
        for file, source_path in tqdm(files, desc="storing", unit="file", disable=quiet):
            try:
                with file.open("rb") as handle:
                    batch_add_file(user=operator, batch=batch, file=handle, name=source_path, enqueue=not inline)
            except OSError as exc:
                errors.append({"source": source_path, "reason": str(exc)})
        batch_documents = selectors.batch_document_list(user=operator, batch=batch)
        if inline:
            process_inline(user=operator, batch=batch, quiet=quiet)
        else:
            self._wait(batch_documents, quiet=quiet, timeout=timeout)
        batch.refresh_from_db()
        summary = selectors.batch_report(user=operator, batch=batch, extra_errors=errors)
        if json:
            self.stdout.write(_json_dumps(summary))
        else:
            self.stdout.write(
                "{documents} documents: {created} created, {updated} updated, {unchanged} unchanged, "
                "{removed} removed, {failed} failed; {chunks} chunks.".format(**summary)
            )
            for path in summary["removed_paths"]:
                self.stdout.write(f"  removed {path} (gone from its archive)")
            for error in summary["errors"]:
                self.stderr.write(f"  {error['source']}: {error['reason']}")
        if summary["failed"]:
            raise CommandError(f"{summary['failed']} document(s) failed.", returncode=1)

    def _wait(self, documents, *, quiet: bool, timeout: float) -> None:
        """Poll until every document is ready or failed, with a progress bar."""
        total = documents.count()
        started = time.monotonic()
        bar = tqdm(total=total, desc="indexing", unit="doc", disable=quiet)
        pending = documents.exclude(status__in=FINISHED)
        done = 0
        last_check = time.monotonic()
        while True:
            left = pending.count()
            bar.update(total - left - done)
            done = total - left
            if not left:
                break
            if time.monotonic() - last_check > 30:
                # Nobody may be watching in a browser: unstick jobs whose worker died here too.
                documents_recover_stale(collection_ids=documents.values("collection_id"))
                last_check = time.monotonic()
            if timeout and time.monotonic() - started > timeout:
                bar.close()
                raise CommandError(f"{left} document(s) still queued after {timeout:g} s: are the workers running?")
            time.sleep(0.5)
        bar.close()


def _json_dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
