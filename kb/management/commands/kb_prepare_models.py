"""Make the embedding models' exported files before the first question (run by `make run` and the image build)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from ingestion.embeddings import get_embedder


class Command(BaseCommand):
    help = (
        "Export the ONNX files that KB_EMBED_BACKEND and KB_QUERY_EMBED_BACKEND run (once, into KB_EMBED_CACHE), "
        "so the first question does not wait for it."
    )

    def handle(self, *args, **options):
        for purpose, questions in (("documents", False), ("questions", True)):
            embedder = get_embedder(questions=questions)
            prepare = getattr(embedder, "prepare", None)  # a TEI server has nothing to prepare here
            made = prepare() if prepare else None
            backend = getattr(embedder, "backend", "a TEI server")
            self.stdout.write(f"{purpose}: {backend}" + (f" ({made})" if made else ""))
