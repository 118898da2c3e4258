"""Ingest files and folders into a collection, through the workers or inline."""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kb import access, selectors, services
from kb.models import Document


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
    help = "Ingest files and folders (recursively) into a collection."

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
            target = services.collection_create(user=operator, name=collection)
        files = _walk(paths)
        summary = {"documents": len(files), "created": 0, "updated": 0, "unchanged": 0, "removed": 0,
                   "failed": 0, "chunks": 0, "errors": []}  # fmt: skip
        documents: dict[int, str] = {}
        quiet = json or options["verbosity"] == 0
        for file, source_path in tqdm(files, desc="storing", unit="file", disable=quiet):
            try:
                with file.open("rb") as handle:
                    outcome = services.document_upload(
                        user=operator, collection=target, file=handle, source_path=source_path, enqueue=not inline
                    )
            except (ValidationError, OSError) as exc:
                reason = " ".join(getattr(exc, "messages", [str(exc)]))
                summary["failed"] += 1
                summary["errors"].append({"source": source_path, "reason": reason})
                continue
            summary[outcome.outcome] += 1
            documents[outcome.document.pk] = outcome.document.source_path
            if inline and outcome.outcome != "unchanged":
                services.document_process(document_id=outcome.document.pk)
        if not inline:
            self._wait(Document.objects.readable_by(operator).filter(pk__in=documents), quiet=quiet, timeout=timeout)
        for document in Document.objects.readable_by(operator).filter(pk__in=documents):
            if document.status == Document.Status.FAILED:
                summary["failed"] += 1
                summary["errors"].append({"source": document.source_path, "reason": document.error})
            else:
                summary["chunks"] += document.chunk_count
        if json:
            self.stdout.write(_json_dumps(summary))
        else:
            self.stdout.write(
                "{documents} documents: {created} created, {updated} updated, {unchanged} unchanged, "
                "{removed} removed, {failed} failed; {chunks} chunks.".format(**summary)
            )
            for error in summary["errors"]:
                self.stderr.write(f"  {error['source']}: {error['reason']}")
        if summary["failed"]:
            raise CommandError(f"{summary['failed']} document(s) failed.", returncode=1)

    def _wait(self, documents, *, quiet: bool, timeout: float) -> None:
        """Poll until every document is ready or failed, with a progress bar."""
        total = documents.count()
        started = time.monotonic()
        bar = tqdm(total=total, desc="indexing", unit="doc", disable=quiet)
        pending = documents.exclude(status__in=[Document.Status.READY, Document.Status.FAILED])
        done = 0
        while True:
            left = pending.count()
            bar.update(total - left - done)
            done = total - left
            if not left:
                break
            if timeout and time.monotonic() - started > timeout:
                bar.close()
                raise CommandError(f"{left} document(s) still queued after {timeout:g} s: are the workers running?")
            time.sleep(0.5)
        bar.close()


def _json_dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
