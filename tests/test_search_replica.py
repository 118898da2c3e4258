"""Search on a read replica (KB_SEARCH_DATABASE_URL, docs/deployment.md): the chunk queries of
hybrid search go to the `search` database; access is decided on the primary.

There is no second Postgres here to replicate to, so the `search` alias is a second connection
to the same test database (what Django's TEST MIRROR does for a replica in tests): the test
checks which connection each query went through, and that the answer is the same.
"""

from __future__ import annotations

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from kb import retrieval
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def search_alias(transactional_db, settings):
    # A connection made here and not listed in DATABASES: Django's test case refuses listed
    # aliases the test did not declare, and allows connections created on the fly.
    primary = connections["default"]
    replica = type(primary)({**primary.settings_dict}, alias="search")
    connections["search"] = replica
    settings.KB_SEARCH_DATABASE = "search"
    yield replica
    replica.close()
    if hasattr(replica, "close_pool"):
        replica.close_pool()
    del connections["search"]


def _chunk_queries(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "kb_chunk" in q["sql"]]


def test_search_reads_chunks_through_the_search_database_and_finds_the_same(search_alias, settings):
    reader = make_user()
    ops = make_collection("ops", viewer=[reader])
    hr = make_collection("hr")  # not readable: the replica must not widen what is searched
    add_document(ops, "backups.md", BACKUPS)
    add_document(hr, "vacation.md", VACATION)

    settings.KB_SEARCH_DATABASE = "default"
    on_primary = retrieval.search(user=reader, query="When does the backup run?")

    settings.KB_SEARCH_DATABASE = "search"
    with CaptureQueriesContext(search_alias) as replica, CaptureQueriesContext(connection) as primary:
        on_replica = retrieval.search(user=reader, query="When does the backup run?")

    replica_sql = _chunk_queries(replica)
    assert any("<=>" in sql for sql in replica_sql), "the dense leg ran elsewhere"
    assert any("ts_rank_cd" in sql for sql in replica_sql), "the keyword leg ran elsewhere"
    assert not any("<=>" in sql or "ts_rank_cd" in sql for sql in _chunk_queries(primary))
    assert [h.chunk.pk for h in on_replica.hits] == [h.chunk.pk for h in on_primary.hits]
    assert on_replica.hits and {h.chunk.document.collection_id for h in on_replica.hits} == {ops.pk}


def test_without_a_search_database_everything_stays_on_the_primary(settings):
    reader = make_user()
    ops = make_collection("ops", viewer=[reader])
    add_document(ops, "backups.md", BACKUPS)
    assert settings.KB_SEARCH_DATABASE == "default"
    with CaptureQueriesContext(connection) as primary:
        result = retrieval.search(user=reader, query="When does the backup run?")
    assert result.hits
    assert any("<=>" in sql for sql in _chunk_queries(primary))
