"""The HNSW index for a new vector size, built outside a transaction: CREATE INDEX CONCURRENTLY.

These run without pytest's wrapping transaction (transaction=True), which is how a worker
meets kb.vector_indexes.ensure() when a re-index to a model of another size starts: the
build must not lock the chunk table, and a build that fails half way (Postgres leaves an
INVALID index behind) must be dropped and made again, not taken for a finished one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from django.db import OperationalError, connection, transaction

from kb import vector_indexes
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection

pytestmark = pytest.mark.django_db(transaction=True)

DIM = 7  # a size no model in the suite uses, so the index is this test's own


@pytest.fixture
def statements():
    """The SQL ensure() sends, and the index dropped afterwards (a flush keeps indexes)."""
    sent: list[str] = []

    def record(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield sent
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {vector_indexes.index_name(DIM)}")


def set_vectors(chunk_ids: list[int], vector: list[float]) -> None:
    with connection.cursor() as cursor:  # embedding_dim is generated from the vector
        cursor.execute("UPDATE kb_chunk SET embedding = %s::vector WHERE id = ANY(%s)", [str(vector), chunk_ids])


@contextmanager
def ingestion_in_progress(chunk_id: int):
    """Another connection holding a transaction that has written a chunk, until the block ends."""
    written, done = threading.Event(), threading.Event()

    def ingest():
        try:
            with transaction.atomic(), connection.cursor() as cursor:  # this thread's own connection
                cursor.execute("UPDATE kb_chunk SET text = text WHERE id = %s", [chunk_id])
                written.set()
                done.wait(30)
        finally:
            written.set()
            connection.close()

    worker = threading.Thread(target=ingest)
    worker.start()
    written.wait(30)
    try:
        yield
    finally:
        done.set()
        worker.join()


@pytest.fixture
def chunk_ids() -> list[int]:
    document = add_document(make_collection("ops"), "backups.md", BACKUPS)
    return list(document.chunks.values_list("pk", flat=True))


def test_outside_a_transaction_the_index_is_built_concurrently_and_used(chunk_ids, statements):
    set_vectors(chunk_ids, [1.0] * DIM)
    assert not connection.in_atomic_block

    vector_indexes.ensure(DIM)

    assert vector_indexes.state(DIM) == "valid"
    creates = [s for s in statements if s.startswith("CREATE INDEX")]
    assert creates == [vector_indexes.create_sql(DIM, concurrently=True)]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a handful of rows: make the index the only way
        cursor.execute(
            f"EXPLAIN SELECT id FROM kb_chunk WHERE embedding_dim = {DIM} "
            f"ORDER BY embedding::vector({DIM}) <=> %s::vector({DIM}) LIMIT 3",
            [str([1.0] * DIM)],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {vector_indexes.index_name(DIM)}" in plan


def test_a_concurrent_build_that_failed_half_way_is_dropped_and_built_again(chunk_ids, statements):
    set_vectors(chunk_ids, [1.0] * DIM)
    # A concurrent build waits for transactions writing to the table; cancelled while it
    # waits (here by a statement timeout, in life by a worker stopped or killed), it leaves
    # its index in the catalogue, marked invalid.
    with ingestion_in_progress(chunk_ids[0]):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '300ms'")
        try:
            with pytest.raises(OperationalError, match="statement timeout"):
                vector_indexes.ensure(DIM)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
    assert vector_indexes.state(DIM) == "invalid"

    statements.clear()
    vector_indexes.ensure(DIM)

    assert vector_indexes.state(DIM) == "valid"
    assert [s.split(" IF ")[0] for s in statements if s.startswith(("DROP", "CREATE"))] == [
        "DROP INDEX CONCURRENTLY",
        "CREATE INDEX CONCURRENTLY",
    ]
    vector_indexes.ensure(DIM)  # and once valid, left alone
    assert vector_indexes.state(DIM) == "valid"
