import pytest

from kb import answering, retrieval
from kb.models import Chunk
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def corpus():
    reader = make_user()
    ops = make_collection("ops", viewer=[reader])
    hr = make_collection("hr")  # the reader has no grant here
    add_document(ops, "backups.md", BACKUPS)
    add_document(hr, "vacation.md", VACATION)
    return reader, ops, hr


def test_fusion_rewards_agreement_between_the_legs():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    keyword = [(3, 5.0), (4, 4.0)]
    fused = retrieval.fuse(dense, keyword, k=60)
    assert [pk for pk, *_ in fused] == [3, 1, 2, 4]
    assert fused[0][2:] == (3, 1)


def test_fusing_only_the_top_of_each_leg_keeps_a_first_place_above_two_mediocre_ones():
    dense = [(1, 0.9)] + [(pk, 0.5) for pk in range(10, 19)] + [(99, 0.4)]
    keyword = [(2, 5.0)] + [(pk, 1.0) for pk in range(20, 29)] + [(99, 0.9)]
    # Whole lists: 99, 10th in both, outranks both first places.
    assert retrieval.fuse(dense, keyword, k=60)[0][0] == 99
    fused = retrieval.fuse_top(dense, keyword, depth=5, k=60)
    assert [pk for pk, *_ in fused[:2]] == [1, 2]
    assert 99 in [pk for pk, *_ in fused]  # still a candidate, further down
    scores = [score for _, score, *_ in fused]
    assert scores == sorted(scores, reverse=True)


def test_fusion_weights_shift_the_order():
    dense = [(1, 0.9)]
    keyword = [(2, 5.0)]
    assert retrieval.fuse(dense, keyword, k=60, dense_weight=1, keyword_weight=2)[0][0] == 2
    assert retrieval.fuse(dense, keyword, k=60, dense_weight=2, keyword_weight=1)[0][0] == 1


def test_hybrid_finds_the_right_section(corpus):
    reader, ops, _ = corpus
    hits = retrieval.search(user=reader, query="how do I restore a backup", collection_ids=[ops.pk]).hits
    assert hits[0].chunk.heading_path.endswith("Restore")


def test_keyword_leg_matches_any_of_the_words(corpus):
    reader, ops, _ = corpus
    hits = retrieval.search(user=reader, query="fourteen zebras", mode="keyword").hits
    assert [h.chunk.heading_path.split(" > ")[-1] for h in hits] == ["Schedule"]


def test_no_leg_returns_chunks_of_an_unreadable_collection(corpus):
    reader, ops, hr = corpus
    for mode in ("dense", "keyword", "hybrid"):
        hits = retrieval.search(user=reader, query="vacation days carry over", mode=mode).hits
        assert all(h.chunk.collection_id == ops.pk for h in hits), mode
        # Naming the unreadable collection explicitly changes nothing.
        hits = retrieval.search(user=reader, query="vacation days", collection_ids=[hr.pk], mode=mode).hits
        assert hits == [], mode


def small_readable_share(readable: int):
    """A reader of `readable` short notes, beside 30 closer matches in a collection they cannot read."""
    reader = make_user()
    mine = make_collection(viewer=[reader])
    other = make_collection()
    for i in range(readable):
        add_document(mine, f"mine{i}.md", f"# Note {i}\n\nA short note about topic {i} and gardening.")
    for i in range(30):
        add_document(other, f"other{i}.md", f"# Gardening {i}\n\nWater the tomatoes every morning, tip {i}.")
    return reader, mine


def test_filtered_dense_search_still_returns_k_results_when_the_readable_share_is_small():
    reader, mine = small_readable_share(3)
    hits = retrieval.search(user=reader, query="gardening tomatoes", top_k=3, mode="dense").hits
    assert len(hits) == 3
    assert {h.chunk.collection_id for h in hits} == {mine.pk}


def test_filtered_hybrid_search_still_returns_k_results_when_the_readable_share_is_small():
    reader, mine = small_readable_share(4)
    hits = retrieval.search(user=reader, query="watering tomatoes", top_k=3).hits
    assert len(hits) == 3
    assert {h.chunk.collection_id for h in hits} == {mine.pk}


def test_the_dense_leg_searches_exactly_when_the_hnsw_scan_comes_back_short():
    """The index found none of the readable chunks: its scan gave up among closer unreadable ones.

    The HNSW index is forced (the other plans priced out) and its iterative scan cut to a
    minimum (hnsw.max_scan_tuples), as on a big table where the readable chunks are a tiny
    share, or in a graph not yet vacuumed after many deletions.
    """
    import numpy as np
    from django.db import connection, transaction

    from kb import selectors

    reader = make_user()
    mine, other = make_collection(viewer=[reader]), make_collection()
    add_document(mine, "deploys.md", "# Deployments\n\nA release goes out every Tuesday after the change review.")
    vector = retrieval.embed_query("When does the nightly backup run?")
    # Two thousand unreadable chunks, every one closer to the question than the readable one.
    backups = add_document(other, "backups.md", "# Backups\n\nThe backup runs nightly.")
    first = backups.chunks.get()
    noise = np.random.default_rng(7).normal(scale=0.02, size=(2000, len(vector)))
    near = [(v / np.linalg.norm(v)).tolist() for v in np.asarray(vector) + noise]
    Chunk.objects.bulk_create(
        Chunk(
            document=backups, collection=other, ordinal=n + 1, text=first.text, generation=first.generation, embedding=v
        )  # fmt: skip
        for n, v in enumerate(near)
    )
    chunks = selectors.chunks_readable_by(user=reader)
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute("SET LOCAL hnsw.max_scan_tuples = 1")
        found = retrieval.dense_leg(chunks, vector, 10)

    assert [Chunk.objects.get(pk=pk).document.source_path for pk, _ in found] == ["deploys.md"]


def test_both_legs_keep_to_the_picked_collections():
    reader = make_user()
    picked = make_collection(viewer=[reader])
    also_readable = make_collection(viewer=[reader])
    add_document(picked, "backups.md", BACKUPS)
    add_document(also_readable, "vacation.md", VACATION)
    for mode in ("dense", "keyword", "hybrid"):
        hits = retrieval.search(user=reader, query="vacation days", collection_ids=[picked.pk], mode=mode).hits
        assert {h.chunk.collection_id for h in hits} <= {picked.pk}, mode
        hits = retrieval.search(user=reader, query="vacation days", mode=mode).hits
        assert also_readable.pk in {h.chunk.collection_id for h in hits}, mode


# --- refining the fused list --------------------------------------------------------------


def _hit(pk: int, *, document: int, ordinal: int, text: str, score: float, heading: str = "S", start=None):
    chunk = Chunk(pk=pk, document_id=document, collection_id=1, ordinal=ordinal, text=text, heading_path=heading,
                  start_char=start, end_char=None if start is None else start + len(text))  # fmt: skip
    return retrieval.Hit(chunk=chunk, score=score)


def test_adjacent_chunks_of_one_section_merge_at_the_better_place_without_the_overlap():
    first = _hit(1, document=7, ordinal=0, text="Stop the app. Run the restore", score=0.5, start=0)
    second = _hit(2, document=7, ordinal=1, text="Run the restore script with a date.", score=0.9, start=14)
    other = _hit(3, document=8, ordinal=0, text="Vacation days carry over.", score=0.7)
    merged = retrieval.merge_adjacent([second, other, first])
    assert [h.chunk.pk for h in merged] == [1, 3]
    assert [c.pk for c in merged[0].chunks] == [1, 2]
    assert merged[0].text == "Stop the app. Run the restore script with a date."
    assert merged[0].score == 0.9


def test_chunks_of_different_sections_or_not_adjacent_stay_apart():
    a = _hit(1, document=7, ordinal=0, text="a", score=0.9, heading="Schedule")
    b = _hit(2, document=7, ordinal=1, text="b", score=0.8, heading="Restore")
    c = _hit(3, document=7, ordinal=3, text="c", score=0.7, heading="Restore")
    assert [h.chunk.pk for h in retrieval.merge_adjacent([a, b, c])] == [1, 2, 3]


def test_a_near_duplicate_of_a_better_passage_is_dropped():
    text = "To restore, stop the application, then run the restore script with the date of the copy."
    best = _hit(1, document=1, ordinal=0, text=text, score=0.9)
    copy = _hit(2, document=2, ordinal=0, text=text.replace("copy.", "copy!"), score=0.8)
    different = _hit(3, document=3, ordinal=0, text="The database backup runs nightly at 02:00.", score=0.7)
    assert [h.chunk.pk for h in retrieval.drop_near_duplicates([best, copy, different], 0.8)] == [1, 3]


def test_ties_prefer_a_document_not_yet_shown():
    a1 = _hit(1, document=1, ordinal=0, text="a", score=0.9)
    a2 = _hit(2, document=1, ordinal=5, text="b", score=0.5)
    b1 = _hit(3, document=2, ordinal=0, text="c", score=0.5)
    a3 = _hit(4, document=1, ordinal=9, text="d", score=0.4)
    assert [h.chunk.pk for h in retrieval.diversify_ties([a1, a2, b1, a3])] == [1, 3, 2, 4]


def test_identical_documents_yield_one_passage(corpus):
    reader, ops, _ = corpus
    add_document(ops, "backups-copy.md", BACKUPS)
    hits = retrieval.search(user=reader, query="how do I restore a backup", collection_ids=[ops.pk]).hits
    texts = [h.text for h in hits]
    assert len(texts) == len(set(texts))
    assert sum("restore script" in t for t in texts) == 1


def test_a_long_section_comes_back_as_one_passage(settings):
    settings.KB_CHUNK_TOKENS = 24
    settings.KB_CHUNK_OVERLAP = 4
    reader = make_user()
    collection = make_collection(viewer=[reader])
    body = " ".join(f"Step {n}: the restore script copies the backup files back into the database folder." for n in
                    range(1, 5))  # fmt: skip
    document = add_document(collection, "restore.md", f"# Restore\n\n{body}\n\n# Vacation\n\nDays off are nice.")
    assert document.chunk_count > 2
    hits = retrieval.search(user=reader, query="restore script copies backup files", top_k=2).hits
    assert len(hits[0].chunks) > 1
    for n in range(1, 5):
        assert hits[0].text.count(f"Step {n}:") == 1


# --- nothing relevant ---------------------------------------------------------------------


def test_an_unrelated_question_is_marked_not_relevant(corpus):
    reader, ops, _ = corpus
    result = retrieval.search(user=reader, query="who won the football world cup in 2018", collection_ids=[ops.pk])
    assert result.best_similarity is not None and not result.relevant
    assert answering.retrieve_sources(user=reader, question="who won the football world cup in 2018",
                                      collections=[ops])[0] == []  # fmt: skip


def test_a_related_question_is_relevant(corpus):
    reader, ops, _ = corpus
    result = retrieval.search(user=reader, query="when does the nightly database backup run", collection_ids=[ops.pk])
    assert result.relevant
    sources, _ = answering.retrieve_sources(user=reader, question="when does the backup run", collections=[ops])
    assert sources and sources[0]["n"] == 1


def test_the_threshold_is_a_setting(corpus, settings):
    reader, ops, _ = corpus
    settings.KB_MIN_SIMILARITY = 0.0
    assert retrieval.search(user=reader, query="who won the world cup", collection_ids=[ops.pk]).relevant
    settings.KB_MIN_SIMILARITY = 0.99
    assert not retrieval.search(user=reader, query="when does the backup run", collection_ids=[ops.pk]).relevant


def test_no_readable_chunk_is_not_relevant():
    reader = make_user()
    hr = make_collection()
    add_document(hr, "vacation.md", VACATION)
    result = retrieval.search(user=reader, query="vacation days")
    assert result.hits == [] and not result.relevant


# --- the prompt's budget ------------------------------------------------------------------


def _source(n: int, text: str) -> dict:
    return {"n": n, "text": text}


def test_budget_keeps_sources_best_first_and_renumbers_them():
    sources = [_source(1, "a" * 400), _source(2, "b" * 2000), _source(3, "c" * 300)]
    kept = answering.fit_to_budget(sources, budget_tokens=200)  # 800 characters
    assert [s["text"][0] for s in kept] == ["a", "b"]  # b cut to the 400 characters left, then full
    assert [s["n"] for s in kept] == [1, 2]
    assert sum(len(s["text"]) for s in kept) <= 800 + 2


def test_budget_skips_a_source_that_cannot_usefully_fit_for_a_shorter_one():
    sources = [_source(1, "a" * 700), _source(2, "b" * 2000), _source(3, "c" * 90)]
    kept = answering.fit_to_budget(sources, budget_tokens=200)  # 100 characters left after the first
    assert [s["text"][0] for s in kept] == ["a", "c"]
    assert [s["n"] for s in kept] == [1, 2]


def test_budget_cuts_the_first_source_at_a_sentence():
    text = "First sentence here. " * 100
    kept = answering.fit_to_budget([_source(1, text)], budget_tokens=50)
    assert len(kept) == 1 and len(kept[0]["text"]) <= 200 + 2
    assert kept[0]["text"].endswith("here. …")


# --- the keyword leg ----------------------------------------------------------------------


def test_keyword_leg_ranks_a_rare_word_above_a_common_one():
    reader = make_user()
    collection = make_collection(viewer=[reader])
    for i in range(6):
        add_document(collection, f"backup{i}.md", f"# Note {i}\n\nThe backup ran. The backup was checked. Backup {i}.")
    add_document(collection, "zebra.md", "# Animals\n\nA zebra was seen near the backup office.")
    hits = retrieval.search(user=reader, query="backup zebra", mode="keyword", top_k=3).hits
    assert hits[0].chunk.document.source_path == "zebra.md"


def test_question_embedding_on_one_thread_matches_and_restores_the_thread_count(settings):
    import torch

    from ingestion.pipeline import embed_texts

    settings.KB_QUERY_EMBED_THREADS = 1
    before = torch.get_num_threads()
    vector = retrieval.embed_query("how do I restore a backup")
    assert torch.get_num_threads() == before
    # The documents' model may run in bf16 (the default on a CPU with AMX): the same vector to 1e-4.
    assert sum(a * b for a, b in zip(vector, embed_texts(["how do I restore a backup"])[0], strict=True)) > 0.9999
