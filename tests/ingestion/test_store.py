"""ingestion.store: a document's chunks written with one binary COPY, every column as given, and the
BM25 statistics that the INSERT triggers keep still exact."""

from __future__ import annotations

import pytest
from django.db import connection

from ingestion.pipeline import ChunkData
from ingestion.processing import documents_process
from ingestion.store import document_replace_chunks
from kb.models import Chunk, Collection, KeywordTotal
from kb.services.reindex import collection_reindex
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user, upload_document
from tests.helpers import assert_statistics_match_the_chunks

pytestmark = pytest.mark.django_db


@pytest.fixture
def insert_statements():
    """(first word of the statement, rows) for every INSERT statement on kb_chunk, from a trigger of the test's own.

    Created inside the test's transaction, so it goes when the test's rollback does.
    """
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE seen_inserts (statement text, n int)")
        cursor.execute("""
            CREATE FUNCTION pg_temp.record_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO seen_inserts SELECT split_part(ltrim(current_query()), ' ', 1), count(*) FROM new_rows;
                RETURN NULL;
            END $$
        """)
        cursor.execute(
            "CREATE TRIGGER test_record_insert AFTER INSERT ON kb_chunk REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.record_insert()"
        )

    def seen() -> list[tuple[str, int]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT upper(statement), n FROM seen_inserts")
            return cursor.fetchall()

    return seen


def _chunks(n: int) -> tuple[list[ChunkData], list[list[float]]]:
    chunks = [
        ChunkData(text=f"Step {i}: rotate the backup log.", heading_path=f"Runbook > Part {i // 100}",
                  page=i // 10 + 1 if i % 3 else None, start_char=40 * i, end_char=40 * i + 31)
        for i in range(n)
    ]  # fmt: skip
    vectors = [[(i + 1) / 1024, -0.5, 0.25, *([0.0] * 381)] for i in range(n)]
    return chunks, vectors


def _pending_document(collection: Collection):
    return add_document(collection, "runbook.md", "# Runbook\n\nPlaceholder.", process=False)


def test_a_document_s_chunks_go_in_one_copy_that_the_insert_triggers_see_whole(insert_statements):
    document = _pending_document(make_collection())
    chunks, vectors = _chunks(620)  # more than one INSERT batch of bulk_create (500)

    assert document_replace_chunks(document_id=document.pk, content_hash=document.content_hash, title="Runbook",
                                   chunks=chunks, vectors=vectors)  # fmt: skip

    assert insert_statements() == [("COPY", 620)]
    assert Chunk.objects.filter(document=document).count() == 620


def test_copied_chunks_keep_every_column_and_postgres_computes_the_generated_ones():
    collection = make_collection()
    document = _pending_document(collection)
    chunks, vectors = _chunks(12)
    chunks[5].heading_path = "H" * 1200  # longer than the column: cut, as before

    document_replace_chunks(document_id=document.pk, content_hash=document.content_hash, title="Runbook",
                            chunks=chunks, vectors=vectors)  # fmt: skip

    collection.refresh_from_db()
    stored = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert [c.ordinal for c in stored] == list(range(12))
    for chunk, given, vector in zip(stored, chunks, vectors, strict=True):
        assert (chunk.text, chunk.heading_path, chunk.page, chunk.start_char, chunk.end_char) == (
            given.text, given.heading_path[:1000], given.page, given.start_char, given.end_char,
        )  # fmt: skip
        assert (chunk.collection_id, chunk.generation) == (collection.pk, collection.embed_generation)
        assert chunk.embedding_dim == 384
        assert list(chunk.embedding) == pytest.approx(vector, abs=1e-7)  # float32, as a vector column holds
        assert chunk.search_length > 0 and "rotat" in chunk.search_vector
    document.refresh_from_db()
    assert (document.status, document.chunk_count, document.title) == ("ready", 12, "Runbook")


def test_keyword_statistics_stay_exact_as_copied_chunks_arrive_are_replaced_and_staged(insert_statements):
    owner = make_user(is_staff=True)
    collection = make_collection(owner=owner)
    # Several documents in one pass, sections of many chunks and of one.
    pending = [
        upload_document(collection, "ops/backups.md", BACKUPS).document,
        upload_document(collection, "hr/vacation.md", VACATION).document,
        upload_document(collection, "runbook.md", "\n\n".join(
            f"## Step {n}\n\n" + "Replicas keep a nightly snapshot of the backup log. " * 40 for n in range(4)
        )).document,
    ]  # fmt: skip
    documents_process(document_ids=[d.pk for d in pending])
    assert {s for s, _ in insert_statements()} == {"COPY"}
    assert KeywordTotal.objects.get(collection_id=collection.pk).chunks == Chunk.objects.count() > len(pending)
    assert_statistics_match_the_chunks()

    # Replaced: the same document's new chunks in new sections, the old ones gone in the same transaction.
    add_document(collection, "runbook.md", "# Runbook\n\n## Restore\n\nRestore the snapshot, then replay the log.")
    assert_statistics_match_the_chunks()
    add_document(collection, "runbook.md", "# Runbook\n\n## Restore\n\nRestore it. Twice.\n\n## Check\n\nCheck it.")
    assert_statistics_match_the_chunks()

    # A re-index stages every document under a new generation, then switches.
    collection_reindex(user=owner, collection=collection, inline=True)
    assert_statistics_match_the_chunks()
    assert len({s for s, _ in insert_statements()}) == 1
