"""A document's way through the pipeline inside kb: prepare (parse, chunk) → embed → store.

The pure pipeline (ingestion.pipeline and the readers, chunking and embeddings it composes)
turns a file into chunks and vectors and knows nothing of Django; this module runs it for a
stored document, marks progress as it goes, and hands the result to ingestion.store. The
Celery tasks (ingestion.tasks) and `kb_ingest --inline` call it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.storage import default_storage
from django.db import models, transaction

# Through the modules, not their names: a test or a benchmark replaces pipeline.embed_texts
# (a cancel mid-pass, a count of passes) and the processing here must see the replacement.
from ingestion import embeddings, pipeline
from ingestion.errors import TRANSIENT, IngestError
from ingestion.status import (
    DocumentCancelled,
    document_fail_on_input,
    document_fail_unexpectedly,
    document_mark,
    documents_claim,
    group_progress,
)
from ingestion.store import ModelChanged, collection_reindex_finish, document_replace_chunks, document_stage_chunks
from kb import vector_indexes
from kb.models import Chunk, Document

logger = logging.getLogger(__name__)


@dataclass
class _Prepared:
    document_id: int
    collection_id: int
    content_hash: str
    parsed: pipeline.ParsedDocument
    texts: list[str]  # what gets embedded: each chunk with its title and heading path
    embedder: embeddings.Embedder  # of the collection's model (or its re-index's)
    generation: int  # the collection generation the vectors are for
    staged: bool  # for a running re-index, not yet searched


def document_process(*, document_id: int, reindex: bool = False) -> None:
    """Parse, chunk, embed and store one document; idempotent, safe to run twice.

    A document is embedded with its collection's model. reindex=True embeds a document
    already in use again with the model of the collection's running re-index
    (kb.services.reindex), into staged chunks that search ignores until the whole
    collection switches over; the last document to finish makes the switch.
    """
    for _attempt in range(3):
        prepared = _document_prepare(document_id=document_id, reindex=reindex)
        try:
            if prepared is not None:
                _document_embed_and_store(prepared)
        except ModelChanged:
            # Re-indexing finished while this version was embedded with the model before:
            # embed it again, with the collection's model now.
            logger.info("document %s: its collection changed model meanwhile; embedding again", document_id)
            continue
        if reindex:
            # Also when this document was done before: a redelivered task finishes what a
            # worker that died between storing and switching left undone.
            collection_id = Document.objects.filter(pk=document_id).values_list("collection_id", flat=True).first()
            if collection_id is not None:
                collection_reindex_finish(collection_id=collection_id)
        return
    raise ModelChanged(f"Document {document_id}'s collection kept changing model while it was embedded.")


def documents_process(*, document_ids: list[int], progress=None) -> None:
    """Process several documents with one embedding pass over all their chunks (kb_ingest --inline, ingest_documents).

    Bulk ingestion of many small pages otherwise embeds a few chunks at a time; together,
    sorted by length across documents, the batches are full and carry little padding.
    progress(done, total) counts chunks embedded (documents of one collection share a pass).
    Each document shows the shared pass's progress, which also keeps its heartbeat fresh
    for stale-job detection; a pass whose documents were all cancelled stops. A document
    that fails on something unexpected fails alone; a transient error is raised for a retry
    (documents already stored are skipped by it).
    """
    documents_claim(document_ids)
    prepared = []
    for pk in document_ids:
        with _failing_alone([pk]):
            item = _document_prepare(document_id=pk)
            if item is not None:
                prepared.append(item)
    by_generation: dict[int, list[_Prepared]] = {}
    for item in prepared:
        by_generation.setdefault(item.generation, []).append(item)
    for group in by_generation.values():
        texts = [t for p in group for t in p.texts]
        vectors = None
        ids = [p.document_id for p in group]
        with _failing_alone(ids):
            vectors = pipeline.embed_texts(texts, progress=group_progress(ids, progress), embedder=group[0].embedder)
        if vectors is None:
            continue
        first = 0
        for item in group:
            with _failing_alone([item.document_id]):
                try:
                    _document_store_chunks(item, vectors[first : first + len(item.texts)])
                except ModelChanged:
                    document_process(document_id=item.document_id)
            first += len(item.texts)


@contextmanager
def _failing_alone(document_ids: list[int]) -> Iterator[None]:
    """Run a step of documents_process; an unexpected error fails these documents, not the whole call.

    A transient error goes up, for the task's retry (which skips what is stored); so does
    the task's soft time limit, which must stop the task, not one document of it; a pass
    whose documents were all cancelled just stops.
    """
    try:
        yield
    except (*TRANSIENT, SoftTimeLimitExceeded):
        raise
    except DocumentCancelled:
        logger.info("documents %s were cancelled while they were processed", document_ids)
    except Exception as exc:
        for pk in document_ids:
            document_fail_unexpectedly(document_id=pk, exc=exc)


def _document_embed_and_store(prepared: _Prepared) -> bool:
    total = len(prepared.texts)

    def progress(done: int, _total: int) -> None:
        if not document_mark(
            document_id=prepared.document_id, status=Document.Status.PROCESSING, stage="embedding", done=done,
            total=total,
        ):  # fmt: skip
            raise DocumentCancelled

    try:
        vectors = pipeline.embed_texts(prepared.texts, progress=progress, embedder=prepared.embedder)
    except DocumentCancelled:
        logger.info("document %s was cancelled while it was processed", prepared.document_id)
        return False
    return _document_store_chunks(prepared, vectors)


def _document_prepare(*, document_id: int, reindex: bool = False) -> _Prepared | None:
    """Parse and chunk a document, marking it as it goes; None if there is nothing (more) to do."""
    document = Document.objects.select_related("collection").filter(pk=document_id).first()
    if document is None:
        logger.info("document %s is gone; nothing to do", document_id)
        return None
    collection = document.collection
    if reindex:
        generation, spec = collection.reindex_generation, collection.reindex_spec
        if generation is None:
            return None  # the re-index finished (or was replaced) before this task ran
        chunks = Chunk.objects.filter(document=document)
        in_use = chunks.filter(generation=collection.embed_generation)
        if chunks.filter(generation=generation).exists() or not in_use.exists():
            # Re-embedded already (a redelivered task), or not ingested yet: its ingestion
            # queues it for the re-index when it stores the chunks.
            return None
    elif document.status in (Document.Status.READY, Document.Status.CANCELLED):
        return None  # a redelivered task for work already done, or work nobody wants any more
    else:
        generation, spec = collection.embed_generation, collection.embed_spec
    embedder = embeddings.get_embedder(spec)
    Document.objects.filter(pk=document_id).update(attempts=models.F("attempts") + 1)
    if not document_mark(document_id=document_id, status=Document.Status.PROCESSING, stage="parsing"):
        return None
    try:
        with _local_file(document.file.name) as path:
            if not path.exists():
                raise IngestError("The uploaded file is missing from storage; upload it again.")
            parsed = pipeline.parse_and_chunk(path, source_path=document.source_path, embedder=embedder)
        if not parsed.chunks:
            raise IngestError("No text could be extracted from this file.")
    except IngestError as exc:
        document_fail_on_input(document_id=document_id, exc=exc, name=document.source_path)
        return None
    texts = [
        pipeline.embedding_text(title=parsed.title, heading_path=c.heading_path, text=c.text, embedder=embedder)
        for c in parsed.chunks
    ]
    if not document_mark(
        document_id=document_id, status=Document.Status.PROCESSING, stage="embedding", total=len(texts)
    ):
        return None
    return _Prepared(
        document_id=document_id, collection_id=collection.pk, content_hash=document.content_hash, parsed=parsed,
        texts=texts, embedder=embedder, generation=generation, staged=reindex,
    )  # fmt: skip


def _document_store_chunks(prepared: _Prepared, vectors) -> bool:
    parsed = prepared.parsed
    if vectors and not transaction.get_connection().in_atomic_block:
        # The first vectors of a new size get their index (built concurrently, outside any transaction).
        vector_indexes.ensure(len(vectors[0]))
    if prepared.staged:
        return document_stage_chunks(
            document_id=prepared.document_id, content_hash=prepared.content_hash, generation=prepared.generation,
            chunks=parsed.chunks, vectors=vectors,
        )  # fmt: skip
    return document_replace_chunks(
        document_id=prepared.document_id, content_hash=prepared.content_hash, title=parsed.title,
        chunks=parsed.chunks, vectors=vectors, metadata=parsed.metadata, generation=prepared.generation,
    )  # fmt: skip


@contextmanager
def _local_file(name: str) -> Iterator[Path]:
    """A local path to a stored file: the file itself on disk storage, else a temporary copy."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp, default_storage.open(name, "rb") as src:
        shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)
