"""The keyword leg is Okapi BM25 inside Postgres: scored as a reference implementation scores
it, from statistics that follow every change to the chunks, over what the user may read."""

from __future__ import annotations

import pytest
from django.db import connection

from ingestion.processing import document_process
from kb import retrieval, selectors
from kb.models import Chunk, Collection, KeywordTerm, KeywordTotal
from kb.services.collections import collection_delete, collection_purge
from kb.services.documents import document_delete
from kb.services.reindex import collection_reindex
from tests.factories import add_document, make_collection, make_user
from tests.helpers import assert_statistics_match_the_chunks

pytestmark = pytest.mark.django_db

# Short documents of different lengths, headings and word counts: one chunk each.
DOCS = {
    "rotation.md": "# Logs\n\n## Rotation\n\nOld log files are rotated weekly and compressed; rotated files older "
                   "than a year are deleted.",
    "backup.md": "# Backups\n\nThe backup runs nightly. A backup is kept for thirty days; the backup log names "
                 "each file.",
    "zebra.md": "# Animals\n\nA zebra was seen near the backup office.",
    "deploy.md": "# Deploys\n\nShip a release by tagging it; the pipeline builds the image and rolls it out one "
                 "server at a time, then checks the log of each server for errors before the next.",
    "vacation.md": "# Vacation\n\nUnused vacation days carry over to the next year, up to five days.",
    "short.md": "# Note\n\nLog everything.",
}  # fmt: skip

QUESTIONS = [
    "how are old log files rotated",
    "backup log",
    "zebra near the office",
    "how many vacation days carry over to next year",
    "rolls out the release one server at a time and checks the log",
    "nothing matches quux",
]


def stored_tokens(collection: Collection) -> dict[int, list[str]]:
    """Each live chunk's lexemes, repeated as often as Postgres counted them (its positions)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, (SELECT array_agg(array_to_string(array_fill(lexeme, "
            "ARRAY[coalesce(array_length(positions, 1), 1)]), ' ')) FROM unnest(c.search_vector)) "
            "FROM kb_chunk c WHERE c.collection_id = %s AND c.generation = %s ORDER BY c.id",
            [collection.pk, collection.embed_generation],
        )
        return {pk: " ".join(words or []).split() for pk, words in cursor.fetchall()}


def query_terms(text: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT unnest(tsvector_to_array(to_tsvector('english', %s)))", [text])
        return [r[0] for r in cursor.fetchall()]


def reference_scores(tokens: dict[int, list[str]], question: str, k1: float, b: float) -> dict[int, float]:
    """bm25s's Lucene BM25 over the same tokens: the reference kb's SQL must agree with."""
    import bm25s

    ids = list(tokens)
    model = bm25s.BM25(method="lucene", k1=k1, b=b)
    model.index([tokens[pk] for pk in ids], show_progress=False)
    vocabulary = {w for words in tokens.values() for w in words}
    terms = [t for t in query_terms(question) if t in vocabulary]
    if not terms:
        return {}
    scores = model.get_scores(terms)
    return {pk: float(s) for pk, s in zip(ids, scores, strict=True) if s > 0}


def kb_scores(collection: Collection, question: str) -> dict[int, float]:
    chunks = Chunk.objects.in_collections([collection.pk]).live()
    return dict(retrieval.keyword_leg(chunks, question, 100, collection_ids=[collection.pk]))


def corpus(collection: Collection) -> None:
    for name, text in DOCS.items():
        add_document(collection, name, text)


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (2.0, 0.3), (0.9, 1.0)])
def test_bm25_scores_equal_the_reference_implementation(settings, k1, b):
    settings.KB_BM25_K1, settings.KB_BM25_B, settings.KB_KEYWORD_CANDIDATES = k1, b, 0
    settings.KB_BM25_SECTION_WEIGHT = 0.0
    collection = make_collection()
    corpus(collection)
    tokens = stored_tokens(collection)
    assert len(tokens) == len(DOCS)
    for question in QUESTIONS:
        expected = reference_scores(tokens, question, k1, b)
        got = kb_scores(collection, question)
        assert got.keys() == expected.keys(), question
        for pk, score in expected.items():
            assert got[pk] == pytest.approx(score, rel=1e-5), question
        # And in the reference's order.
        assert sorted(got, key=lambda pk: (-got[pk], pk)) == sorted(expected, key=lambda pk: (-expected[pk], pk))


def test_common_words_still_score_but_bring_no_candidates_of_their_own(settings):
    """A budget of one chunk leaves 'log' out of the candidates: scores are the reference's all the same."""
    settings.KB_KEYWORD_CANDIDATES, settings.KB_BM25_SECTION_WEIGHT = 1, 0.0
    collection = make_collection()
    corpus(collection)
    tokens = stored_tokens(collection)
    question = "zebra log"  # 'log' is in most chunks, 'zebra' in one
    expected = reference_scores(tokens, question, settings.KB_BM25_K1, settings.KB_BM25_B)
    got = kb_scores(collection, question)
    assert len(got) == 1 and len(expected) > 1
    ((pk, score),) = got.items()
    assert score == pytest.approx(expected[pk], rel=1e-5) and expected[pk] == max(expected.values())


def test_a_heading_word_counts_more_when_the_setting_says_so(settings):
    settings.KB_BM25_SECTION_WEIGHT = 0.0
    collection = make_collection()
    add_document(collection, "a.md", "# Misc\n\n## Other\n\nWe talked about rotation once, briefly, today.")
    add_document(collection, "b.md", "# Logs\n\n## Rotation\n\nOld files are compressed every week by the job.")
    settings.KB_BM25_HEADING_WEIGHT = 1.0
    plain = kb_scores(collection, "rotation")
    settings.KB_BM25_HEADING_WEIGHT = 3.0
    boosted = kb_scores(collection, "rotation")
    a, b = (Chunk.objects.get(document__source_path=name).pk for name in ("a.md", "b.md"))
    assert boosted[a] == pytest.approx(plain[a])  # its word is in the text only
    assert boosted[b] > plain[b]


LONG_SECTION = "# Logs\n\n## Rotation\n\n" + " ".join(
    ["Each night the agent compresses yesterday's output and moves it to the archive volume."] * 12
    + ["Rotation keeps thirty files; rotation by size starts a new file at 100 MB; rotation by age"
       " removes files older than a month. Rotation never touches the file being written."] * 6
)  # fmt: skip
# As long as the section's first chunk, with the word once where that chunk has it in its heading.
PASSING = "# Notes\n\n## Misc\n\nWe talked about rotation once. " + " ".join(
    ["Each morning the team reviews yesterday's tickets and plans the work for the day."] * 11
)


def section_reference(collection: Collection, question: str, k1: float, b: float) -> dict[int, float]:
    """Each chunk's Lucene BM25 plus its whole section's, the section scored with the chunks' IDF."""
    import math

    tokens = stored_tokens(collection)
    chunk = reference_scores(tokens, question, k1, b)
    sections: dict[tuple, list[int]] = {}
    for c in Chunk.objects.filter(pk__in=tokens).order_by("pk"):
        sections.setdefault((c.document_id, c.heading_path), []).append(c.pk)
    n = len(tokens)
    df = {t: sum(t in words for words in tokens.values()) for t in set(query_terms(question))}
    avg_section = sum(len(words) for words in tokens.values()) / len(sections)
    out = {}
    for members in sections.values():
        words = [w for pk in members for w in tokens[pk]]
        norm = k1 * (1 - b + b * len(words) / avg_section)
        section = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * words.count(t) / (words.count(t) + norm)
                      for t in df if df[t] and words.count(t))  # fmt: skip
        for pk in members:
            if pk in chunk:
                out[pk] = chunk[pk] + section
    return out


def test_section_scores_add_the_whole_section_s_bm25_as_the_reference_computes_it(settings):
    settings.KB_KEYWORD_CANDIDATES, settings.KB_BM25_SECTION_WEIGHT = 0, 1.0
    collection = make_collection()
    add_document(collection, "logs.md", LONG_SECTION)
    add_document(collection, "notes.md", PASSING)
    corpus(collection)
    assert Chunk.objects.filter(document__source_path="logs.md").count() >= 3
    for question in ["log rotation", "how does rotation by size work", *QUESTIONS]:
        expected = section_reference(collection, question, settings.KB_BM25_K1, settings.KB_BM25_B)
        got = kb_scores(collection, question)
        assert got.keys() == expected.keys(), question
        for pk, score in expected.items():
            assert got[pk] == pytest.approx(score, rel=1e-5), question


def test_a_passage_in_a_section_about_the_words_outranks_a_passing_mention(settings):
    settings.KB_KEYWORD_CANDIDATES = 0
    collection = make_collection()
    add_document(collection, "logs.md", LONG_SECTION)
    add_document(collection, "notes.md", PASSING)
    first = Chunk.objects.filter(document__source_path="logs.md").order_by("ordinal")[0]
    passing = Chunk.objects.get(document__source_path="notes.md")
    assert "rotation" not in first.text.lower()  # only its heading holds the word
    settings.KB_BM25_SECTION_WEIGHT = 0.0
    alone = kb_scores(collection, "rotation")
    settings.KB_BM25_SECTION_WEIGHT = 1.0
    with_sections = kb_scores(collection, "rotation")
    # On their own the two chunks are about even; their sections tell them apart.
    assert alone[first.pk] == pytest.approx(alone[passing.pk], rel=0.2)
    assert with_sections[first.pk] > 1.3 * with_sections[passing.pk]


def test_statistics_follow_every_change_to_the_chunks():
    owner = make_user(is_staff=True)
    first, second = make_collection(owner=owner), make_collection(owner=owner)
    corpus(first)
    add_document(second, "zebra.md", DOCS["zebra.md"])
    assert_statistics_match_the_chunks()
    assert KeywordTotal.objects.get(collection_id=first.pk).chunks == len(DOCS)
    assert KeywordTotal.objects.get(collection_id=first.pk).sections == len(DOCS)
    assert KeywordTerm.objects.get(collection_id=first.pk, lexeme="zebra").df == 1

    # A document changed: its chunks are replaced in one transaction.
    changed = add_document(first, "zebra.md", "# Animals\n\nTwo zebras and a zebra foal grazed by the river.")
    assert_statistics_match_the_chunks()
    assert not KeywordTerm.objects.filter(collection_id=first.pk, lexeme="offic").exists()

    # Deleted.
    document_delete(user=owner, document=changed)
    assert_statistics_match_the_chunks()
    assert not KeywordTerm.objects.filter(collection_id=first.pk, lexeme="zebra").exists()

    # Re-indexed: the staged generation is counted apart, then the old one goes.
    old_generation = Collection.objects.get(pk=first.pk).embed_generation
    collection_reindex(user=owner, collection=first, inline=True)
    first.refresh_from_db()
    assert first.embed_generation != old_generation
    assert_statistics_match_the_chunks()
    assert not KeywordTotal.objects.filter(collection_id=first.pk, generation=old_generation).exists()
    assert KeywordTotal.objects.get(collection_id=first.pk).chunks == len(DOCS) - 1

    # A collection deleted, then purged, leaves nothing behind.
    collection_delete(actor=owner, collection=first)
    collection_purge(actor=owner, collection=first)
    assert_statistics_match_the_chunks()
    assert not KeywordTerm.objects.filter(collection_id=first.pk).exists()
    assert not KeywordTotal.objects.filter(collection_id=first.pk).exists()


def test_an_update_of_a_chunk_moves_its_counts():
    collection = make_collection()
    corpus(collection)
    add_document(collection, "logs.md", LONG_SECTION)
    chunk = Chunk.objects.get(document__source_path="zebra.md")
    Chunk.objects.filter(pk=chunk.pk).update(text="A giraffe, not a zebra.")
    assert_statistics_match_the_chunks()
    assert KeywordTerm.objects.get(collection_id=collection.pk, lexeme="giraff").df == 1
    # Moved to a section of its own, and back; one chunk of a long section moved out of it.
    Chunk.objects.filter(pk=chunk.pk).update(heading_path="Animals > Giraffes")
    assert_statistics_match_the_chunks()
    Chunk.objects.filter(pk=chunk.pk).update(heading_path="Animals")
    assert_statistics_match_the_chunks()
    logs = Chunk.objects.filter(document__source_path="logs.md").order_by("ordinal")
    Chunk.objects.filter(pk=logs[0].pk).update(heading_path="Logs")
    assert_statistics_match_the_chunks()
    Chunk.objects.filter(document__source_path="logs.md").update(heading_path="Logs > Rotation")
    assert_statistics_match_the_chunks()


def test_staged_chunks_of_a_reindex_do_not_change_the_live_scores(settings, monkeypatch):
    settings.KB_KEYWORD_CANDIDATES = 0
    owner = make_user(is_staff=True)
    collection = make_collection(owner=owner)
    corpus(collection)
    before = kb_scores(collection, "backup log zebra")
    # Stage a re-index of every document without finishing it: the new generation's chunks
    # sit beside the live ones.
    queued = []
    monkeypatch.setattr("ingestion.queue.reindex", lambda pk, **kw: queued.append(pk))
    monkeypatch.setattr("ingestion.store.collection_reindex_finish", lambda **kw: False)
    collection_reindex(user=owner, collection=collection)
    for pk in queued[:-1]:
        document_process(document_id=pk, reindex=True)
    collection.refresh_from_db()
    assert KeywordTotal.objects.get(collection_id=collection.pk, generation=collection.reindex_generation).chunks > 0
    assert kb_scores(collection, "backup log zebra") == pytest.approx(before)


def test_idf_counts_only_the_collections_the_user_may_read(settings):
    """Another team's collection full of a word must not change how a reader's passages rank."""
    settings.KB_KEYWORD_CANDIDATES = 0
    reader = make_user()
    readable = make_collection(viewer=[reader])
    corpus(readable)
    alone = kb_scores(readable, "zebra backup")
    hidden = make_collection()
    for i in range(8):
        add_document(hidden, f"zoo{i}.md", f"# Zoo {i}\n\nEvery zebra here is counted: zebra number {i}.")
    # What search gives the reader: the same scores as before the hidden collection existed.
    hits = retrieval.search(user=reader, query="zebra backup", mode="keyword", top_k=10).hits
    assert hits and all(h.chunk.collection_id == readable.pk for h in hits)
    raw = {h.chunk.pk: h for h in hits}
    keyword_order = sorted(alone, key=lambda pk: (-alone[pk], pk))
    assert [pk for pk in keyword_order if pk in raw][: len(raw)] == sorted(raw, key=lambda pk: raw[pk].keyword_rank)
    readable_chunks = selectors.chunks_readable_by(user=reader)
    readable_ids = [c for ids in selectors.collections_by_model(user=reader).values() for c in ids]
    assert readable_ids == [readable.pk]
    assert dict(retrieval.keyword_leg(readable_chunks, "zebra backup", 100, collection_ids=readable_ids)) == (
        pytest.approx(alone)
    )
    scope = Chunk.objects.in_collections([readable.pk, hidden.pk]).live()
    # Whereas over both collections the word is common, and ranks the reader's passage lower.
    both = dict(retrieval.keyword_leg(scope, "zebra backup", 100, collection_ids=[readable.pk, hidden.pk]))
    zebra = Chunk.objects.get(collection=readable, document__source_path="zebra.md").pk
    assert both[zebra] < alone[zebra]


def test_the_keyword_leg_of_a_user_who_reads_nothing_is_empty():
    owner = make_user(is_staff=True)
    collection = make_collection(owner=owner)
    corpus(collection)
    outsider = make_user()
    assert retrieval.search(user=outsider, query="zebra backup", mode="keyword").hits == []
