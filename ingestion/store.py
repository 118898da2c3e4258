"""Where chunks land: a document's chunks replaced in one transaction, and a re-index's
staged chunks switched in for the whole collection at once.

A reader sees either a document's old chunks or its new ones, never half; a retried task
never duplicates one (it replaces what it finds).
"""

from __future__ import annotations

import logging

from django.db import connection, models, transaction
from django.db.models.functions import Coalesce
from pgvector import Vector
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from ingestion import queue
from kb.audit import audit_record
from kb.models import GENERATION_SEQUENCE, Chunk, Collection, Document

logger = logging.getLogger(__name__)


class ModelChanged(Exception):
    """The collection switched to another model while a document was embedded with the old one."""


def _collection_generations(collection_id: int) -> tuple[int, int | None] | None:
    """(embed_generation, reindex_generation) of a collection, locked against a switch until commit.

    FOR SHARE: documents of one collection store their chunks side by side, while
    collection_reindex_finish (FOR UPDATE) waits for them, and they for it.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT embed_generation, reindex_generation FROM {Collection._meta.db_table} WHERE id = %s FOR SHARE",
            [collection_id],
        )
        return cursor.fetchone()


# Every column a chunk is written with; id and the generated ones (embedding_dim, search_vector,
# search_length) are Postgres's own.
_COPY_COLUMNS = {
    "document_id": "int8", "collection_id": "int8", "generation": "int8", "ordinal": "int4", "text": "text",
    "heading_path": "text", "page": "int4", "start_char": "int4", "end_char": "int4", "embedding": "vector",
}  # fmt: skip


def _copy_chunks(document: Document, generation: int, chunks, vectors) -> None:
    """Write a document's chunks with one binary COPY, inside the caller's transaction.

    COPY sends the rows and their vectors as binary, where bulk_create renders every vector
    as text inside a multi-row INSERT for Postgres to parse. It fires the same statement-level
    INSERT triggers (migration 0011's BM25 statistics, with the whole COPY as the transition table).
    """
    rows = [
        (document.pk, document.collection_id, generation, i, c.text, c.heading_path[:1000], c.page, c.start_char,
         c.end_char, Vector(vector))
        for i, (c, vector) in enumerate(zip(chunks, vectors, strict=True))
    ]  # fmt: skip
    if not rows:
        return
    with connection.cursor() as cursor:
        raw = cursor.cursor
        # On this cursor only: the connection's other queries keep reading vectors as Django expects.
        register_vector_info(raw, TypeInfo.fetch(raw.connection, "vector"))
        table = Chunk._meta.db_table
        with raw.copy(f"COPY {table} ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_COPY_COLUMNS.values()))
            for row in rows:
                copy.write_row(row)


def _locked(document_id: int) -> tuple[tuple[int, int | None] | None, Document | None]:
    """The document's collection generations (FOR SHARE) and the document itself (FOR UPDATE)."""
    collection_id = Document.objects.filter(pk=document_id).values_list("collection_id", flat=True).first()
    generations = _collection_generations(collection_id) if collection_id is not None else None
    return generations, Document.objects.select_for_update().filter(pk=document_id).first()


def _mark_ready(document: Document, count: int, **fields) -> None:
    Document.objects.filter(pk=document.pk).transition(
        Document.Status.READY, stage="", progress_done=count, progress_total=count, error="", **fields
    )


@transaction.atomic
def document_replace_chunks(
    *, document_id: int, content_hash: str, title: str, chunks, vectors, metadata: dict | None = None,
    generation: int | None = None,
) -> bool:  # fmt: skip
    """Swap a document's chunks for new ones in one transaction; False if the work is stale.

    `generation` is the collection generation the vectors were embedded for; ModelChanged
    if the collection has switched to another since.
    """
    locked, document = _locked(document_id)
    if (
        locked is None
        or document is None
        or document.content_hash != content_hash
        or document.status == Document.Status.CANCELLED
    ):
        # Deleted, re-uploaded while we worked (the newer version's task will store it), or cancelled.
        return False
    current, reindexing = locked
    if generation is not None and generation != current:
        raise ModelChanged
    # Every generation goes: a running re-index's staged chunks are of the previous version.
    Chunk.objects.filter(document=document).delete()
    _copy_chunks(document, current, chunks, vectors)
    fields = {"chunk_count": len(chunks)}
    if title:
        fields["title"] = title[:500]
    if metadata is not None:
        fields["metadata"] = metadata
    _mark_ready(document, len(chunks), **fields)
    if reindexing is not None:
        queue.reindex(document.pk)  # a version stored during a re-index needs the new model's vectors too
    return True


@transaction.atomic
def document_stage_chunks(*, document_id: int, content_hash: str, generation: int, chunks, vectors) -> bool:
    """Store a document's chunks for a running re-index, unsearched until the switch; False if stale."""
    locked, document = _locked(document_id)
    if locked is None or locked[1] != generation or document is None or document.content_hash != content_hash:
        return False  # the re-index finished or was replaced, or the document changed or went
    Chunk.objects.filter(document=document, generation=generation).delete()
    _copy_chunks(document, generation, chunks, vectors)
    _mark_ready(document, len(chunks))
    return True


def next_generation() -> int:
    """A new generation number, unique across collections (one sequence for all)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [GENERATION_SEQUENCE])
        return cursor.fetchone()[0]


def documents_to_reindex(collection: Collection):
    """Ids of the documents in use (with chunks of the current generation) not yet embedded for the re-index."""
    # NOT EXISTS probes chunk_unique_ordinal (document, generation, ...) per chunk, so the
    # check after each document stops at the first one not done instead of hashing them all.
    staged = Chunk.objects.filter(document_id=models.OuterRef("document_id"), generation=collection.reindex_generation)
    return (
        Chunk.objects.filter(collection=collection, generation=collection.embed_generation)
        .exclude(models.Exists(staged))
        .values_list("document_id", flat=True)
        .distinct()
        .order_by("document_id")
    )


def collection_reindex_finish(*, collection_id: int) -> bool:
    """Switch the collection to its re-index's model once every document has its new chunks; True if it did.

    One transaction: the new chunks become the ones searched, the old ones are deleted, and
    the collection records its new model, so a question sees either all old or all new.
    """
    with transaction.atomic():
        collection = Collection.objects.select_for_update().filter(pk=collection_id).first()
        if collection is None or collection.reindex_generation is None:
            return False
        if documents_to_reindex(collection).exists():
            return False  # still under way, or a document failed: the old model serves meanwhile
        old_model, new_generation = collection.embed_model, collection.reindex_generation
        Chunk.objects.filter(collection=collection).exclude(generation=new_generation).delete()
        collection.embed_model, collection.embed_generation = collection.reindex_model, new_generation
        collection.reindex_model = collection.reindex_generation = None
        collection.save(update_fields=["embed_model", "embed_generation", "reindex_model", "reindex_generation"])
        counts = (
            Chunk.objects.filter(document=models.OuterRef("pk"))
            .values("document")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        Document.objects.filter(collection=collection).update(chunk_count=Coalesce(models.Subquery(counts), 0))
        audit_record(
            actor=None, action="collection.reindex.switch", collection=collection, target=collection.name,
            model=collection.embed_model, previous_model=old_model,
        )  # fmt: skip
    logger.info("collection %s now searches with %s", collection_id, collection.embed_spec)
    return True
