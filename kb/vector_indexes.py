"""The HNSW indexes over chunk vectors: one partial expression index per vector size.

Chunk.embedding is an untyped `vector` column, so that collections on models of different
sizes share one table. HNSW needs a fixed size, so each size N in use has

    CREATE INDEX chunk_embedding_hnsw_N ON kb_chunk
        USING hnsw ((embedding::vector(N)) vector_cosine_ops) WITH (m = 16, ef_construction = 64)
        WHERE embedding_dim = N

and the dense query (kb.retrieval.dense_leg) orders by exactly `embedding::vector(N) <=> q`
with `embedding_dim = N`: the expression and the predicate are what let the planner use it.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import connection

# pgvector's HNSW indexes take `vector` values of at most 2,000 dimensions.
MAX_DIM = 2000
TABLE = "kb_chunk"


def index_name(dim: int) -> str:
    return f"chunk_embedding_hnsw_{int(dim)}"


def check_dim(dim: int) -> None:
    if not 0 < int(dim) <= MAX_DIM:
        raise ValidationError(
            f"pgvector's HNSW index takes vectors of 1 to {MAX_DIM:,} dimensions, not {dim}; "
            "choose another embedding model or set KB_EMBED_DIM to the model's size."
        )


def create_sql(dim: int, *, concurrently: bool) -> str:
    dim = int(dim)
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {index_name(dim)} ON {TABLE} "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
        f"WHERE embedding_dim = {dim}"
    )


def state(dim: int) -> str:
    """ "valid", "invalid" (a concurrent build that failed half way) or "missing"."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [index_name(dim)],
        )
        row = cursor.fetchone()
    if row is None:
        return "missing"
    return "valid" if row[0] else "invalid"


def ensure(dim: int) -> None:
    """Create the index for vectors of `dim` if it is missing.

    Outside a transaction it is built CONCURRENTLY, so ingestion and search go on meanwhile;
    inside one (a migration, a test) it is built plainly, which is quick while the table
    holds few vectors of that size.
    """
    check_dim(dim)
    found = state(dim)
    if found == "valid":
        return
    concurrently = not connection.in_atomic_block
    with connection.cursor() as cursor:
        if not concurrently:
            # Postgres will not index a table with foreign-key checks still deferred in this transaction.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        if found == "invalid":
            cursor.execute(f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {index_name(dim)}")
        cursor.execute(create_sql(dim, concurrently=concurrently))
        if not concurrently:
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
