"""The keyword leg reads a bounded number of chunks: candidates come from the question's rarest
words (KB_KEYWORD_CANDIDATES), common words only score, and MaxScore's bound says when the
result is exactly the unbounded BM25's (kb/keyword.py)."""

from __future__ import annotations

import math

import pytest

from kb import keyword, retrieval
from kb.keyword import Term, plan
from kb.models import Chunk
from tests.factories import add_document, make_collection, make_user


def terms(n: float, **dfs: float) -> list[Term]:
    return [Term(word, df, keyword.idf(n, df)) for word, df in dfs.items()]


def test_the_plan_takes_the_rarest_words_that_fit_the_budget():
    found = plan(terms(10_000, common=3_000, rare=5, mid=400, uncommon=50), 500, 10_000)
    assert (found.mode, found.essential, found.expected) == ("any", ["rare", "uncommon", "mid"], 455)
    # What a chunk without them can score: the left-out word's IDF.
    assert found.left_out_bound == pytest.approx(keyword.idf(10_000, 3_000))
    assert plan(terms(10_000, common=3_000, rare=5), 0, 10_000).essential == ["rare", "common"]  # 0: no bound
    assert plan([], 500, 0).essential == []


def test_when_no_word_fits_the_chunks_holding_the_rarest_together_stand_in():
    # 10,000 x 0.2 x 0.3 = 600 > 500, x 0.6 = 360: three words.
    found = plan(terms(10_000, a=2_000, b=3_000, c=6_000, d=9_000), 500, 10_000)
    assert (found.mode, found.essential, found.expected) == ("all", ["a", "b", "c"], 360)
    # Two are enough when they are rare enough together; never fewer than two.
    assert plan(terms(10_000, a=1_000, b=2_000, c=6_000), 500, 10_000).essential == ["a", "b"]
    found = plan(terms(10_000, a=8_000, b=9_000), 500, 10_000)
    assert (found.essential, found.expected) == (["a", "b"], 500)  # estimate 7,200: the cap binds


django_db = pytest.mark.django_db


def _corpus(collection, *, zebras: int = 10, others: int = 20) -> None:
    # Every page says "station"; a few say "zebra", twice or once, at different lengths.
    for i in range(zebras):
        extra = " The zebra grazes." * (1 + i % 2)
        add_document(collection, f"z{i}.md", f"# Page {i}\n\nThe station log of day {i}.{extra}" + " Quiet." * i)
    for i in range(others):
        add_document(collection, f"s{i}.md", f"# Note {i}\n\nThe station was inspected on day {i}." + " Calm." * i)


def _search(collection, question: str, limit: int) -> keyword.KeywordResult:
    chunks = Chunk.objects.in_collections([collection.pk]).live()
    return keyword.keyword_search(chunks, question, limit, collection_ids=[collection.pk])


@django_db
def test_a_common_word_brings_no_candidates_and_the_bound_proves_the_ranking_exact(settings):
    collection = make_collection()
    _corpus(collection)
    settings.KB_KEYWORD_CANDIDATES = 0
    unbounded = _search(collection, "zebra station", 2)
    assert unbounded.plan.candidates == 30 and unbounded.plan.exact  # every page holds "station"
    settings.KB_KEYWORD_CANDIDATES = 12
    bounded = _search(collection, "zebra station", 2)
    # Only the ten zebra pages were read; "station" still scored in them ...
    assert bounded.plan.essential == ["zebra"] and bounded.plan.candidates == 10
    zebra_pages = set(Chunk.objects.filter(document__source_path__startswith="z").values_list("pk", flat=True))
    assert {pk for pk, _ in bounded.rows} <= zebra_pages
    # ... and the best 4 x 2 of them outscore anything a page without "zebra" could reach, so
    # the ranking and the scores are exactly the unbounded leg's.
    assert bounded.plan.exact is True
    assert bounded.rows == [(pk, pytest.approx(score)) for pk, score in unbounded.rows]


@django_db
def test_the_bound_says_so_when_the_ranking_may_differ(settings):
    collection = make_collection()
    _corpus(collection)
    settings.KB_KEYWORD_CANDIDATES = 12
    # A pool of 4 x 5 = 20 cannot be filled from 10 zebra pages: pages with only "station"
    # belong in it, and the plan does not claim otherwise.
    found = _search(collection, "zebra station", 5)
    assert found.plan.exact is False and found.plan.candidates == 10


@django_db
def test_a_question_of_common_words_reads_at_most_the_budget_of_chunks_holding_them_all(settings):
    collection = make_collection()
    _corpus(collection)
    settings.KB_KEYWORD_CANDIDATES = 4
    found = _search(collection, "station day", 10)  # both words in all 30 pages
    assert found.plan.mode == "all" and found.plan.candidates == 4 and found.plan.exact is False
    assert len(found.rows) == 4 and all(score > 0 for _, score in found.rows)
    settings.KB_KEYWORD_CANDIDATES = 0
    assert _search(collection, "station day", 10).plan.candidates == 30


@django_db
def test_search_reports_the_keyword_plan(settings):
    settings.KB_KEYWORD_CANDIDATES = 12
    reader = make_user()
    collection = make_collection(viewer=[reader])
    _corpus(collection, zebras=3, others=12)
    result = retrieval.search(user=reader, query="zebra station", mode="keyword", top_k=3)
    assert result.keyword_plan.essential == ["zebra"] and result.keyword_plan.candidates == 3
    assert result.hits and all(h.chunk.document.source_path.startswith("z") for h in result.hits)
    # IDF over what was searched: 15 chunks, "station" in all of them.
    station = next(t for t in result.keyword_plan.terms if t.lexeme == "station")
    assert station.idf == pytest.approx(math.log(1 + 0.5 / 15.5))


def _dense_statements(user, **kwargs) -> list[str]:
    from django.db import connection

    seen: list[str] = []

    def wrapper(execute, sql, params, many, context):
        if "<=>" in sql:
            seen.append(connection.ops.compose_sql(sql, params))
        return execute(sql, params, many, context)

    from kb import access

    with access.request_cache(), connection.execute_wrapper(wrapper):
        retrieval.search(user=user, query="zebra station", **kwargs)
    return seen


@django_db
@pytest.mark.parametrize("picked", [False, True])
def test_the_dense_statement_filters_the_collections_once(picked):
    """One model, a reader of some collections: the vector search names them in one filter.

    Filtered twice with the same list, Postgres multiplied the selectivities, expected a
    hundredth of the rows and scanned them exactly instead of through HNSW (810 ms at 1 M).
    """
    reader = make_user()
    mine, other = make_collection(viewer=[reader]), make_collection(viewer=[reader])
    hidden = make_collection()
    for collection in (mine, other, hidden):
        _corpus(collection, zebras=2, others=2)
    statements = _dense_statements(reader, collection_ids=[mine.pk, hidden.pk] if picked else None)
    assert statements
    for sql in statements:
        assert sql.count('"kb_chunk"."collection_id" IN') == 1, sql
        listed = sql.split('"kb_chunk"."collection_id" IN (')[1].split(")")[0]
        assert str(hidden.pk) not in listed.split(", ")
        assert (str(other.pk) in listed.split(", ")) is not picked


WEIRD = r"O'Reilly's C:\temp\dir x:* !&| <-> 'quoted' back\\slash naïve ü-ber 10.5% a''b"


@django_db
def test_every_lexeme_postgres_makes_is_quoted_into_a_tsquery_that_matches_it():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT tsvector_to_array(to_tsvector('english', %s) || to_tsvector('simple', %s))",
                       [WEIRD, WEIRD])  # fmt: skip
        # Postgres's parser splits at quotes and backslashes; a lexeme holding them (another
        # parser, array_to_tsvector) must still be quoted right.
        lexemes = cursor.fetchone()[0] + ["it's", "back\\slash", "x:*", "a|b&c", "<->", "''", "\\'"]
        for lexeme in lexemes:
            cursor.execute("SELECT array_to_tsvector(ARRAY[%s]) @@ %s::tsquery, %s::tsquery::text",
                           [lexeme, keyword._quoted(lexeme), keyword._quoted(lexeme)])  # fmt: skip
            matched, text = cursor.fetchone()
            assert matched, (lexeme, text)


@django_db
def test_a_question_of_odd_characters_finds_its_page(settings):
    settings.KB_KEYWORD_CANDIDATES = 1  # every plan through the quoted query
    collection = make_collection()
    add_document(collection, "odd.md", f"# Odd\n\n{WEIRD}")
    add_document(collection, "plain.md", "# Plain\n\nNothing odd here at all.")
    for question in ["O'Reilly's", r"C:\temp\dir", "x:* !&| <->", "a''b naïve"]:
        found = _search(collection, question, 5)
        assert [Chunk.objects.get(pk=pk).document.source_path for pk, _ in found.rows] == ["odd.md"], question


@django_db
def test_hyphenated_words_score_as_the_reference_scores_them(settings):
    """'built-in' is one lexeme beside 'built'; parsed by to_tsquery it became a phrase that matched nothing."""
    from tests.test_bm25 import reference_scores, stored_tokens

    settings.KB_KEYWORD_CANDIDATES, settings.KB_BM25_SECTION_WEIGHT = 0, 0.0
    collection = make_collection()
    add_document(collection, "a.md", "# Functions\n\nThe built-in functions are always there; built-in means shipped.")
    add_document(collection, "b.md", "# Houses\n\nThe house was built in a year, by hand.")
    add_document(collection, "c.md", "# Mail\n\nSend an e-mail to the read-only list.")
    tokens = stored_tokens(collection)
    for question in ["built-in functions", "read-only e-mail list", "built"]:
        expected = reference_scores(tokens, question, settings.KB_BM25_K1, settings.KB_BM25_B)
        got = dict(_search(collection, question, 10).rows)
        assert got.keys() == expected.keys(), question
        for pk, score in expected.items():
            assert got[pk] == pytest.approx(score, rel=1e-5), question
