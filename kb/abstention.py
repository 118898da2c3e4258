"""Whether what retrieval found answers the question at all, from more than the top cosine.

The closest passage's cosine alone refused 3 of 10 unanswerable held-out questions: a
question about pandas DataFrames sits close to the csv module's pages. Two more signals
tell such questions apart. The question's rare words ("pandas", "DataFrame") occur nowhere
in what the user may search: kb weighs each word by its IDF over the collections searched
(the statistics the BM25 leg keeps) and asks how much of that weight the collections know
at all (`known`) and the passages found hold (`coverage`); words that occur nowhere are
named (`missing`), so the answer can say what was not found. And the two legs lead to
different places: the dense and keyword legs' best passages share no document (`agreement`).

The decision (`judge`) and its thresholds were chosen on the development questions and
reported on the held-out ones (docs/benchmarks.md, "Abstention"; `kb_eval` prints the
calibration table).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

_EVIDENCE_SQL = """
WITH parts AS MATERIALIZED (
    SELECT c.id AS collection_id, c.embed_generation AS generation FROM kb_collection c WHERE c.id = ANY(%s)
),
words AS MATERIALIZED (
    SELECT w.word, l AS lexeme
    FROM unnest(%s::text[]) AS w(word), unnest(tsvector_to_array(to_tsvector(%s::regconfig, w.word))) AS l
),
totals AS MATERIALIZED (
    SELECT coalesce(sum(t.chunks), 0)::float8 AS n
    FROM kb_keywordtotal t JOIN parts p ON p.collection_id = t.collection_id AND p.generation = t.generation
),
shown AS MATERIALIZED (
    SELECT DISTINCT u.lexeme FROM kb_chunk c, unnest(c.search_vector) u WHERE c.id = ANY(%s)
)
SELECT w.lexeme, w.word,
       (SELECT coalesce(sum(t.df), 0) FROM kb_keywordterm t
        JOIN parts p ON p.collection_id = t.collection_id AND p.generation = t.generation
        WHERE t.lexeme = w.lexeme)::float8 AS df,
       (SELECT n FROM totals),
       w.lexeme IN (SELECT lexeme FROM shown)
FROM words w
"""


@dataclass
class Evidence:
    """What kb weighs before answering; all shares are of the question's IDF weight."""

    similarity: float | None = None  # cosine of the closest readable passage (None: dense leg not run)
    coverage: float | None = None  # share held by the passages found (None: no word to weigh)
    known: float | None = None  # share held by anything searched
    missing: list[str] = field(default_factory=list)  # the question's words found nowhere searched
    # Whether the dense and keyword legs' best five passages share a document (None: a leg is empty).
    agreement: bool | None = None

    def as_json(self) -> dict:
        return {"similarity": self.similarity, "coverage": self.coverage, "known": self.known,
                "missing": self.missing, "agreement": self.agreement}  # fmt: skip


def weigh(query: str, *, collection_ids: list[int], chunk_ids: list[int], similarity: float | None,
          agreement: bool | None = None) -> Evidence:
    """The evidence for `query` over `collection_ids` (what the user may search) and the chunks found."""
    # Words as a person wrote them, so `missing` can quote them; Postgres stems each one.
    words = list(dict.fromkeys(re.findall(r"[^\W_](?:[\w.'-]*[^\W_])?", query)))[:64]
    if not words or not collection_ids:
        return Evidence(similarity=similarity, agreement=agreement)
    with connection.cursor() as cursor:
        cursor.execute(_EVIDENCE_SQL, [collection_ids, words, settings.KB_FTS_CONFIG, chunk_ids])
        rows = cursor.fetchall()
    if not rows:
        return Evidence(similarity=similarity, agreement=agreement)
    # One row per (word, lexeme); a lexeme counts once, named by its first word in the question.
    first: dict[str, tuple] = {}
    for row in sorted(rows, key=lambda r: words.index(r[1])):
        first.setdefault(row[0], row)
    total = shown_weight = known_weight = 0.0
    missing = []
    for _lexeme, word, df, n, shown in first.values():
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        total += idf
        shown_weight += idf if shown else 0.0
        known_weight += idf if df > 0 else 0.0
        if df == 0:
            missing.append(word)
    return Evidence(similarity=similarity, coverage=shown_weight / total, known=known_weight / total,
                    missing=missing, agreement=agreement)  # fmt: skip


def judge(evidence: Evidence, **thresholds: float) -> bool:
    """Whether the passages found are worth answering from (False: say nothing was found).

    Refused: the closest passage is not similar enough (KB_MIN_SIMILARITY); the two legs
    agree on no document and the closest passage is below KB_MIN_SIMILARITY_UNAGREED (a
    question that the words and the meaning lead to different places is seldom answered by
    either). Off by default: less than KB_MIN_KNOWN of the question's weight occurs anywhere
    searched; the passages found hold less than KB_MIN_COVERAGE of it.
    `thresholds` (similarity, known, unagreed, coverage) stand in for the settings: kb_eval's
    calibration table asks what other values would do.
    """
    similarity_min = thresholds.get("similarity", settings.KB_MIN_SIMILARITY)
    known_min = thresholds.get("known", settings.KB_MIN_KNOWN)
    unagreed_min = thresholds.get("unagreed", settings.KB_MIN_SIMILARITY_UNAGREED)
    coverage_min = thresholds.get("coverage", settings.KB_MIN_COVERAGE)
    similarity = evidence.similarity
    if similarity is not None and similarity < similarity_min:
        return False
    if evidence.known is not None and evidence.known < known_min:
        return False
    if evidence.agreement is False and similarity is not None and similarity < unagreed_min:
        return False
    if evidence.coverage is not None and evidence.coverage < coverage_min:
        return False
    return True
