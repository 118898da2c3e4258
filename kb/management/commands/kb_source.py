"""Add, list, sync and remove the sources that keep a collection in step with where its documents live."""

from __future__ import annotations

import json
import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from ingestion.connectors import KINDS
from kb import access, selectors
from kb.management.cli import process_inline
from kb.models import Source, SourceRun
from kb.services.collections import collection_create
from kb.services.sources import location_for_display, source_add, source_remove, source_sync


class Command(BaseCommand):
    help = (
        "Sources that sync a collection from a Git repository, a server folder, an intranet site, Confluence "
        "or MediaWiki. `kb_source add KIND LOCATION --collection NAME`, `kb_source sync ID|--collection NAME|--all`, "
        "`kb_source list`, `kb_source remove ID`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="{add,sync,list,remove}")
        add = commands.add_parser("add", help="add a source (its first sync runs in the workers)")
        add.add_argument("kind", choices=KINDS)
        add.add_argument("location", help="repository URL or path, folder, start URL, or the wiki's base URL")
        add.add_argument("--collection", required=True, metavar="NAME")
        add.add_argument("--create", action="store_true", help="create the collection if it does not exist")
        add.add_argument("--name", default="", help="the source's name (the first folder of its documents' paths)")
        add.add_argument("--branch", default="")
        add.add_argument("--include", action="append", default=[], metavar="GLOB")
        add.add_argument("--exclude", action="append", default=[], metavar="GLOB")
        add.add_argument("--every", type=int, default=None, metavar="MINUTES", help="sync on this schedule")
        add.add_argument("--space", default="", help="Confluence: the space key")
        add.add_argument("--namespace", action="append", type=int, default=[], help="MediaWiki: namespace number(s)")
        add.add_argument("--prefix", default="", help="web: only pages under this path")
        add.add_argument("--sitemap", default="", help="web: start from this sitemap URL")
        add.add_argument("--web-url", default="", help="git: page address template with {commit} and {path}")
        add.add_argument("--attachments", action="store_true", help="Confluence: read PDF/Word/text attachments")
        add.add_argument("--username", default="")
        add.add_argument(
            "--token-env", default="", metavar="VAR", help="read the token or password from this environment variable"
        )
        add.add_argument("--no-sync", action="store_true", help="do not queue a first sync")
        add.add_argument("--json", action="store_true")
        sync = commands.add_parser("sync", help="sync now, here, and print what changed")
        which = sync.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?", type=int)
        which.add_argument("--collection", metavar="NAME")
        which.add_argument("--all", action="store_true")
        sync.add_argument("--json", action="store_true")
        listing = commands.add_parser("list", help="list sources with their last run")
        listing.add_argument("--json", action="store_true")
        remove = commands.add_parser("remove", help="remove a source and (unless kept) its documents")
        remove.add_argument("id", type=int)
        remove.add_argument("--keep-documents", action="store_true")

    def handle(self, *args, action: str, **options):
        self.operator = access.system_user()
        return getattr(self, f"_{action}")(**options)

    def _add(self, *, kind, location, collection, create, json: bool, **o) -> None:
        target = selectors.collection_list(user=self.operator).filter(name=collection).first()
        if target is None:
            if not create:
                raise CommandError(f"No collection named {collection!r}; add --create to make it.")
            target = collection_create(user=self.operator, name=collection)
        secret = {"username": o["username"]}
        if o["token_env"]:
            if not os.environ.get(o["token_env"]):
                raise CommandError(f"The environment variable {o['token_env']} is empty.")
            secret["token"] = os.environ[o["token_env"]]
        options = {
            "space": o["space"], "namespaces": o["namespace"], "prefix": o["prefix"], "sitemap": o["sitemap"],
            "web_url": o["web_url"], "attachments": o["attachments"] or None,
        }  # fmt: skip
        try:
            source = source_add(
                user=self.operator, collection=target, kind=kind, location=location, name=o["name"],
                branch=o["branch"], include=o["include"], exclude=o["exclude"], options=options, secret=secret,
                every_minutes=o["every"], sync=not o["no_sync"],
            )  # fmt: skip
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        if json:
            self.stdout.write(_dumps(_describe(source)))
        else:
            self.stdout.write(str(source.pk))

    def _sync(self, *, id, collection, all, json: bool, **options) -> None:
        quiet = json or options["verbosity"] == 0
        sources = Source.objects.select_related("collection").order_by("pk")
        if id is not None:
            sources = sources.filter(pk=id)
        elif collection:
            try:
                target = selectors.collection_get_by_name(user=self.operator, name=collection)
            except Http404 as exc:
                raise CommandError(str(exc)) from None
            sources = sources.filter(collection=target)
        picked = list(sources)
        if not picked:
            raise CommandError("No such source." if id is not None else "No sources to sync.")
        total = {"documents": 0, "created": 0, "updated": 0, "unchanged": 0, "removed": 0, "failed": 0, "chunks": 0}
        total.update(errors=[], removed_paths=[], sources=[])
        for source in picked:
            run = source_sync(user=self.operator, source_id=source.pk, trigger=SourceRun.Trigger.COMMAND, enqueue=False)
            if run is None:
                total["failed"] += 1
                total["errors"].append({"source": source.name, "reason": "A sync of this source is already running."})
                continue
            if run.batch_id:
                process_inline(user=self.operator, batch=run.batch, quiet=quiet)
                run.batch.refresh_from_db()
                report = selectors.batch_report(user=self.operator, batch=run.batch)
                for key in ("documents", "created", "updated", "unchanged", "removed", "failed", "chunks"):
                    total[key] += report[key]
                total["errors"] += report["errors"]
                total["removed_paths"] += report["removed_paths"]
            if run.status == SourceRun.Status.FAILED:
                total["failed"] += 1
                total["errors"].append({"source": source.name, "reason": run.error})
            total["sources"].append({"id": source.pk, "name": source.name, "run": run.pk, "status": run.status})
        if json:
            self.stdout.write(_dumps(total))
        else:
            self.stdout.write(
                "{documents} documents: {created} created, {updated} updated, {unchanged} unchanged, "
                "{removed} removed, {failed} failed; {chunks} chunks.".format(**total)
            )
            for path in total["removed_paths"]:
                self.stdout.write(f"  removed {path} (gone from its source)")
            for error in total["errors"]:
                self.stderr.write(f"  {error['source']}: {error['reason']}")
        if total["failed"]:
            raise CommandError(f"{total['failed']} page(s) or source(s) failed.", returncode=1)

    def _list(self, *, json: bool, **options) -> None:
        rows = []
        for collection in selectors.collection_list(user=self.operator):
            rows += [_describe(s) for s in selectors.source_list(user=self.operator, collection=collection)]
        if json:
            self.stdout.write(_dumps(rows))
            return
        if not rows:
            self.stdout.write("No sources.")
        for row in rows:
            last = row["last_run"]
            when = f"last run {last['started_at']} {last['status']}" if last else "never run"
            every = f"every {row['every_minutes']} min" if row["every_minutes"] else "on demand"
            self.stdout.write(
                f"{row['id']:>4}  {row['collection']}/{row['name']}  {row['kind']}  {row['location']}  {every}; {when}"
            )

    def _remove(self, *, id: int, keep_documents: bool, **options) -> None:
        source = Source.objects.select_related("collection").filter(pk=id).first()
        if source is None:
            raise CommandError(f"No source {id}.")
        removed = source_remove(user=self.operator, source=source, keep_documents=keep_documents)
        kept = " (its documents kept)" if keep_documents else f" and {removed} document(s)"
        self.stdout.write(f"Removed source {id} {source.name}{kept}.")


def _describe(source: Source) -> dict:
    last = getattr(source, "last_run", None)
    return {
        "id": source.pk, "name": source.name, "collection": source.collection.name, "kind": source.kind,
        "location": location_for_display(source.location), "branch": source.branch, "include": source.include,
        "exclude": source.exclude, "every_minutes": source.every_minutes,
        "next_run_at": source.next_run_at.isoformat() if source.next_run_at else None,
        "documents": getattr(source, "documents_count", None),
        "last_run": None if last is None else {
            "id": last.pk, "status": last.status, "started_at": last.started_at.isoformat(),
            "finished_at": last.finished_at.isoformat() if last.finished_at else None,
            "summary": {k: v for k, v in last.summary.items() if k != "removed_paths"}, "error": last.error,
        },
    }  # fmt: skip


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
