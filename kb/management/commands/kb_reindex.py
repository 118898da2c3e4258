"""Embed every document of a collection again, e.g. after changing the embedding model."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kb import access, selectors
from kb.services.reindex import collection_reindex


class Command(BaseCommand):
    help = (
        "Re-embed every document of a collection with the configured model (KB_EMBED_MODEL, KB_EMBED_URL, "
        "KB_EMBED_DIM; any size), through the workers or here with --inline. Search keeps answering from "
        "the old vectors with the old model until every document is done; then the collection switches "
        "over in one transaction. Run it again to resume after a failure."
    )

    def add_arguments(self, parser):
        parser.add_argument("--collection", required=True, metavar="NAME")
        parser.add_argument("--inline", action="store_true", help="process here, without Celery or Redis")

    def handle(self, *args, collection: str, inline: bool, **options):
        operator = access.system_user()
        target = selectors.collection_list(user=operator).filter(name=collection).first()
        if target is None:
            raise CommandError(f"No collection named {collection!r}.")
        bar = tqdm(desc="re-embedding" if inline else "queueing", unit="doc", disable=options["verbosity"] == 0)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            count = collection_reindex(user=operator, collection=target, inline=inline, progress=progress)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        finally:
            bar.close()
        verb = "Re-embedded" if inline else "Queued"
        self.stdout.write(f"{verb} {count} document(s) of {target.name}.")
        target.refresh_from_db()
        if target.reindex_spec is None:
            self.stdout.write(f"{target.name} searches with {target.embed_spec}.")
        elif inline:
            raise CommandError(
                f"{target.name} still searches with {target.embed_spec}: some documents could not be re-embedded "
                "(their error is on the document). Fix them and run kb_reindex again to finish."
            )
        else:
            self.stdout.write(f"{target.name} switches to {target.reindex_spec} when the workers have done them all.")
