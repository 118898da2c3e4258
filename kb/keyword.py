"""The keyword leg: Okapi BM25 inside Postgres, with a bounded number of candidates.

Scored as Lucene scores it: IDF is ln(1 + (N - df + 0.5) / (df + 0.5)), never negative, and
there is no (k1 + 1) factor, which would change no order. Why not an extension: none of the
BM25 extensions (pg_search, VectorChord-bm25, pg_textsearch) ships with the embedded Postgres
or the pgvector image, so the top-k pruning those do with block-max WAND is done here with
MaxScore's rule, in two statements:

1. `_TERMS_SQL` reads the question's words' document frequencies and the totals from
   kb_keywordterm / kb_keywordtotal (kept by migration 0011's triggers, summed over the
   collections searched and their live generation: IDF is that of what the user may read and
   asked to search, nothing else). No chunk is read.
2. `plan()` decides, from those exact counts, which words bring candidates: the rarest ones,
   as many as keep their chunks within KB_KEYWORD_CANDIDATES. A chunk holding none of them
   scores less than the sum of the other words' IDF (a word adds idf * tf / (tf + K) < idf),
   so when the candidates' 4 x limit-th score is at least that sum, the result is exactly the
   unpruned BM25's (`KeywordPlan.exact`). Common words still score in every candidate; they
   never make the statement read their chunks. When even the rarest word is in more chunks
   than the budget, the candidates are the chunks holding all of the rarest words together
   (as few of them as bring the estimate under the budget), at most the budget of them.
3. `_BM25_SQL` scores the candidates: the GIN index finds them; a word's frequency in each
   is read with ts_rank_cd (a heading occurrence, label A, may count more:
   KB_BM25_HEADING_WEIGHT), its length from the stored search_length. A chunk's score adds
   KB_BM25_SECTION_WEIGHT times the BM25 of its whole section, scored as one text with the
   chunks' IDF (docs/benchmarks.md: on both question sets the keyword leg and hybrid gain
   from it).

Raw SQL because the scoring runs over a set of words and sections the database decides, with
tsvector functions the ORM does not wrap; `scope` is the caller's queryset (access,
collections, live generation) as SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections

_TERMS_SQL = """
WITH parts AS MATERIALIZED (
    SELECT c.id AS collection_id, c.embed_generation AS generation FROM kb_collection c WHERE c.id = ANY(%s)
),
query AS MATERIALIZED (
    SELECT DISTINCT l AS lexeme FROM unnest(tsvector_to_array(to_tsvector(%s::regconfig, %s))) AS l
),
totals AS MATERIALIZED (
    SELECT coalesce(sum(t.chunks), 0)::float8 AS n,
           coalesce(sum(t.length), 0)::float8 / greatest(coalesce(sum(t.chunks), 0), 1) AS avgdl,
           coalesce(sum(t.length), 0)::float8 / greatest(coalesce(sum(t.sections), 0), 1) AS avgsl
    FROM kb_keywordtotal t JOIN parts p ON p.collection_id = t.collection_id AND p.generation = t.generation
),
terms AS MATERIALIZED (
    SELECT t.lexeme, sum(t.df)::float8 AS df
    FROM kb_keywordterm t JOIN parts p ON p.collection_id = t.collection_id AND p.generation = t.generation
    WHERE t.lexeme IN (SELECT lexeme FROM query)
    GROUP BY t.lexeme
    HAVING sum(t.df) > 0
)
SELECT totals.n, totals.avgdl, totals.avgsl, terms.lexeme, terms.df FROM totals LEFT JOIN terms ON true
"""

_BM25_SQL = """
WITH scope AS NOT MATERIALIZED ({scope}),
-- Each word as a one-lexeme query: cast from its quoted form, not parsed by to_tsquery, which
-- would make "built-in" the phrase 'built-in' <-> 'built' <-> 'in' and match nothing.
weighted AS MATERIALIZED (
    SELECT w.lexeme, w.idf, w.quoted::tsquery AS q
    FROM unnest(%s::text[], %s::float8[], %s::text[]) AS w(lexeme, idf, quoted)
),
-- The candidates' query is a constant of the statement (not a subquery's result), so the
-- planner knows how few chunks it matches and does not also build a bitmap of every
-- readable chunk from the collection index to intersect with it (32 ms at 1 M chunks).
candidates AS MATERIALIZED (
    SELECT s.pk, s.document_id, s.heading_path, s.search_vector, s.search_length FROM scope s
    WHERE s.search_vector @@ %s::tsquery
    LIMIT %s
),
-- A word's frequency in a chunk: ts_rank_cd of a one-word query without normalisation sums
-- the label weights of its occurrences (each is a cover of length 1), read from the GIN-found
-- tsvector without unnesting it. Postgres caps weights at 1, so they come divided by
-- max(1, KB_BM25_HEADING_WEIGHT) (label A: KB_BM25_HEADING_WEIGHT, the others 1) and the
-- sum is multiplied back.
frequencies AS MATERIALIZED (
    SELECT c.pk, c.document_id, c.heading_path, c.search_length AS dl, w.idf,
           %s * ts_rank_cd(%s::float4[], c.search_vector, w.q, 0) AS tf
    FROM candidates c JOIN weighted w ON c.search_vector @@ w.q
),
chunk_scores AS MATERIALIZED (
    SELECT f.pk, f.document_id, f.heading_path,
           sum(f.idf * f.tf / (f.tf + %s * (1 - %s + %s * f.dl / %s))) AS score
    FROM frequencies f
    GROUP BY f.pk, f.document_id, f.heading_path
),
-- The best chunks re-scored with their whole section (the document's chunks under the same
-- heading path, among those searched) as one text, with the chunks' IDF, when
-- KB_BM25_SECTION_WEIGHT > 0. Only the best 4 x LIMIT by their own score: scoring the
-- sections of every candidate cost 3-6 times the rest of the leg.
best AS MATERIALIZED (
    SELECT * FROM chunk_scores ORDER BY score DESC, pk LIMIT 4 * %s
),
sections AS MATERIALIZED (
    SELECT DISTINCT document_id, heading_path FROM best WHERE %s > 0
),
section_chunks AS MATERIALIZED (
    SELECT s.document_id, s.heading_path, s.search_vector, s.search_length
    FROM sections JOIN scope s ON s.document_id = sections.document_id AND s.heading_path = sections.heading_path
),
section_lengths AS MATERIALIZED (
    SELECT document_id, heading_path, sum(search_length) AS sl FROM section_chunks GROUP BY document_id, heading_path
),
section_frequencies AS MATERIALIZED (
    SELECT c.document_id, c.heading_path, w.lexeme, max(w.idf) AS idf,
           sum(%s * ts_rank_cd(%s::float4[], c.search_vector, w.q, 0)) AS tf
    FROM section_chunks c JOIN weighted w ON c.search_vector @@ w.q
    GROUP BY c.document_id, c.heading_path, w.lexeme
),
section_scores AS MATERIALIZED (
    SELECT f.document_id, f.heading_path,
           sum(f.idf * f.tf / (f.tf + %s * (1 - %s + %s * l.sl / %s))) AS score
    FROM section_frequencies f
    JOIN section_lengths l ON l.document_id = f.document_id AND l.heading_path = f.heading_path
    GROUP BY f.document_id, f.heading_path
),
pool AS MATERIALIZED (
    SELECT count(*) AS size, min(score) AS floor FROM best
)
SELECT c.pk, c.score + %s * coalesce(s.score, 0) AS score, pool.size, pool.floor,
       (SELECT count(*) FROM candidates) AS candidates
FROM best c LEFT JOIN section_scores s ON s.document_id = c.document_id AND s.heading_path = c.heading_path
CROSS JOIN pool
ORDER BY score DESC, c.pk
LIMIT %s
"""


@dataclass
class Term:
    lexeme: str
    df: float
    idf: float


@dataclass
class KeywordPlan:
    """Which words brought candidates, and whether the result is the unpruned BM25's."""

    terms: list[Term] = field(default_factory=list)
    # The words whose chunks are the candidates (rarest first), and how they combine:
    # "any" (a chunk holding one of them) or "all" (holding every one; the budget binds).
    essential: list[str] = field(default_factory=list)
    mode: str = "any"
    budget: int = 0
    # Chunks the plan expected to read (exact for "any", an independence estimate for "all").
    expected: float = 0.0
    # Filled once the statement ran: candidates read, and whether no chunk left out could
    # have entered the best 4 x limit (MaxScore's bound).
    candidates: int = 0
    exact: bool | None = None

    @property
    def left_out_bound(self) -> float:
        """What a chunk holding none of the essential words can score at most (its chunk part)."""
        chosen = set(self.essential) if self.mode == "any" else set()
        return sum(t.idf for t in self.terms if t.lexeme not in chosen)


@dataclass
class KeywordResult:
    rows: list[tuple[int, float]]
    plan: KeywordPlan


def idf(n: float, df: float) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def plan(terms: list[Term], budget: int, n: float) -> KeywordPlan:
    """The candidate words: the rarest, as many as keep their chunks within `budget` (0: all).

    Their document frequencies are exact counts over the `n` chunks searched, so "any" of
    them reads at most the sum of their frequencies. When even the rarest word is in more
    chunks than the budget, chunks holding all of the rarest few stand in (as few words as
    bring the estimate, assuming independent words, under the budget), capped at the budget.
    """
    ordered = sorted(terms, key=lambda t: (t.df, t.lexeme))
    out = KeywordPlan(terms=ordered, budget=budget)
    for term in ordered:
        if budget and out.expected + term.df > budget:
            break
        out.essential.append(term.lexeme)
        out.expected += term.df
    if out.essential or not ordered:
        return out
    out.mode, expected = "all", n
    for term in ordered:
        out.essential.append(term.lexeme)
        expected *= term.df / n
        if len(out.essential) >= 2 and expected <= budget:
            break
    out.expected = min(expected, float(budget))
    return out


def _quoted(lexeme: str) -> str:
    """A lexeme as a tsquery operand: in single quotes, a quote doubled and a backslash escaped."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def keyword_search(chunks, text: str, limit: int, *, collection_ids: Iterable[int]) -> KeywordResult:
    """(chunk id, BM25 score) best first among `chunks`, with IDF over `collection_ids`, and the plan."""
    try:
        scope, scope_params = (
            chunks.order_by()
            .values("pk", "document_id", "heading_path", "search_vector", "search_length")
            .query.sql_with_params()
        )
    except EmptyResultSet:  # e.g. no readable collection: Django knows there is nothing to search
        return KeywordResult([], KeywordPlan())
    with connections[chunks.db].cursor() as cursor:
        cursor.execute(_TERMS_SQL, [list(collection_ids), settings.KB_FTS_CONFIG, text.replace("\\", " ")])
        rows = cursor.fetchall()
        n, avgdl, avgsl = rows[0][:3] if rows else (0.0, 0.0, 0.0)
        terms = [Term(lexeme, df, idf(n, df)) for *_, lexeme, df in rows if lexeme is not None]
        the_plan = plan(terms, settings.KB_KEYWORD_CANDIDATES, n)
        if not the_plan.essential:
            return KeywordResult([], the_plan)
        k1, b = settings.KB_BM25_K1, settings.KB_BM25_B
        section, heading = settings.KB_BM25_SECTION_WEIGHT, settings.KB_BM25_HEADING_WEIGHT
        scale = max(1.0, heading)
        weights = [1 / scale, 1 / scale, 1 / scale, heading / scale]  # labels D, C, B, A
        cap = the_plan.budget if the_plan.mode == "all" and the_plan.budget else None
        params = [*scope_params, [t.lexeme for t in terms], [t.idf for t in terms], [_quoted(t.lexeme) for t in terms],
                  (" | " if the_plan.mode == "any" else " & ").join(map(_quoted, the_plan.essential)), cap,
                  scale, weights, k1, b, b, avgdl or 1.0, limit, section, scale, weights, k1, b, b, avgsl or 1.0,
                  section, limit]  # fmt: skip
        cursor.execute(_BM25_SQL.format(scope=scope), params)
        found = cursor.fetchall()
    if found:
        _, _, size, floor, the_plan.candidates = found[0]
        # Exact when no chunk left out could reach the pool of the best 4 x limit: the pool is
        # full and its last score is at least what a left-out chunk can score at most.
        bound = the_plan.left_out_bound
        the_plan.exact = the_plan.mode == "any" and (bound == 0 or (size >= 4 * limit and floor >= bound))
    else:
        the_plan.exact = the_plan.mode == "any"
    return KeywordResult([(pk, float(score)) for pk, score, *_ in found], the_plan)


def keyword_leg(chunks, text: str, limit: int, *, collection_ids: Iterable[int]) -> list[tuple[int, float]]:
    """(chunk id, Okapi BM25 score) best first, among `chunks`, with IDF over `collection_ids`.

    `chunks` is the scoped queryset (access, collections, live generation) and
    `collection_ids` the collections it covers: the caller's readable ones, so that no word
    count of a collection the user cannot read shapes the ranking.
    """
    return keyword_search(chunks, text, limit, collection_ids=collection_ids).rows
