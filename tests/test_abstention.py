"""kb refuses questions its collections cannot answer from more than the top cosine: the
question's words, weighed by IDF over what the user may search, must be in what was found."""

from __future__ import annotations

import pytest

from kb import abstention, retrieval
from kb.models import Message
from kb.services.conversations import NO_SOURCE_ANSWER, message_ask
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db

CSV = """# csv — CSV File Reading and Writing

## Reader objects

Use csv.reader to read rows from a file opened with newline=''; each row is a list of strings.
Rows with missing values give empty strings, which you can drop with a filter.
"""

JSON = """# json — JSON encoder and decoder

## Basic usage

json.load reads a JSON document from a file and returns Python objects.
"""

PANDAS = "How do I read a CSV file into a pandas DataFrame and drop rows with missing values?"
ANSWERABLE = "How do I read rows from a CSV file?"


@pytest.fixture
def reader():
    user = make_user()
    docs = make_collection(viewer=[user])
    add_document(docs, "csv.md", CSV)
    add_document(docs, "json.md", JSON)
    user.docs = docs
    return user


def test_the_question_s_words_that_nothing_holds_are_named_and_weigh_against_it(reader):
    result = retrieval.search(user=reader, query=PANDAS)
    evidence = result.evidence
    assert evidence.missing == ["pandas", "DataFrame"]
    assert 0 < evidence.coverage < 0.8 and evidence.known == pytest.approx(evidence.coverage)
    answerable = retrieval.search(user=reader, query=ANSWERABLE).evidence
    assert answerable.missing == [] and answerable.coverage == pytest.approx(1.0)
    assert evidence.similarity == result.best_similarity


def test_coverage_counts_the_words_of_the_passages_found_not_of_the_whole_collection(reader):
    # "json" is known to the collection, but the passage found for a CSV question lacks it.
    evidence = retrieval.search(user=reader, query="read rows from a CSV file as JSON", top_k=1).evidence
    assert evidence.known == pytest.approx(1.0) and evidence.coverage < 1.0 and evidence.missing == []


def test_a_word_only_another_team_s_collection_holds_counts_as_missing(reader):
    hidden = make_collection()
    add_document(hidden, "pandas.md", "# pandas\n\nA pandas DataFrame is read with read_csv.")
    evidence = retrieval.search(user=reader, query=PANDAS).evidence
    assert evidence.missing == ["pandas", "DataFrame"]  # nothing says another collection has them


def test_below_the_coverage_threshold_kb_refuses_and_says_which_words_it_found_nowhere(reader, settings):
    settings.KB_MIN_COVERAGE = 0.8
    assert not retrieval.search(user=reader, query=PANDAS).relevant
    assert retrieval.search(user=reader, query=ANSWERABLE).relevant
    message, _ = message_ask(user=reader, question=PANDAS, collections=[reader.docs])
    assert message.status == Message.Status.NO_ANSWER and message.sources == []
    assert message.answer == f"{NO_SOURCE_ANSWER} None of them mentions “pandas” or “DataFrame”."
    settings.KB_MIN_COVERAGE = 0.0
    assert retrieval.search(user=reader, query=PANDAS).relevant  # the check is a setting


def test_judge_weighs_similarity_known_words_agreement_and_coverage(settings):
    settings.KB_MIN_SIMILARITY, settings.KB_MIN_KNOWN = 0.35, 0.5
    settings.KB_MIN_SIMILARITY_UNAGREED, settings.KB_MIN_COVERAGE = 0.45, 0.5
    good = {"similarity": 0.6, "coverage": 0.9, "known": 1.0, "agreement": True}
    assert abstention.judge(abstention.Evidence(**good))
    assert not abstention.judge(abstention.Evidence(**{**good, "similarity": 0.3}))
    assert not abstention.judge(abstention.Evidence(**{**good, "known": 0.4}))
    assert not abstention.judge(abstention.Evidence(**{**good, "coverage": 0.4}))
    # Legs that agree on no document: answered only when the closest passage is close enough.
    assert not abstention.judge(abstention.Evidence(**{**good, "similarity": 0.4, "agreement": False}))
    assert abstention.judge(abstention.Evidence(**{**good, "similarity": 0.4, "agreement": True}))
    assert abstention.judge(abstention.Evidence(**{**good, "similarity": 0.5, "agreement": False}))
    assert abstention.judge(abstention.Evidence(similarity=None, coverage=None))  # nothing to weigh: no veto
    # Thresholds passed in stand in for the settings (kb_eval's calibration table).
    assert abstention.judge(abstention.Evidence(**{**good, "known": 0.4}), known=0.3)


def test_the_legs_agree_when_their_best_passages_share_a_document(reader):
    chunks = {c.pk: c for c in retrieval.Chunk.objects.filter(collection=reader.docs)}
    by_name = {c.document.source_path: pk for pk, c in chunks.items()}
    csv, json_ = by_name["csv.md"], by_name["json.md"]
    assert retrieval._agree([(csv, 0.9)], [(csv, 3.0)], chunks) is True
    assert retrieval._agree([(csv, 0.9)], [(json_, 3.0)], chunks) is False
    assert retrieval._agree([(csv, 0.9)], [], chunks) is None
    assert retrieval.search(user=reader, query=ANSWERABLE).evidence.agreement is True


def test_a_question_of_stop_words_only_has_no_coverage_to_weigh(reader):
    evidence = retrieval.search(user=reader, query="how do I do it?").evidence
    assert evidence.coverage is None and evidence.missing == []
