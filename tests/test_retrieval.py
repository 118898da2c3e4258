import pytest

from kb import retrieval
from tests.factories import add_document, make_collection, make_user
from tests.test_views import BACKUPS

pytestmark = pytest.mark.django_db

VACATION = """# Vacation policy

## Requesting leave

Request vacation days in the HR portal at least two weeks ahead; your manager approves them.

## Carry-over

Up to five unused vacation days carry over into the next year.
"""


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


def test_filtered_dense_search_still_returns_k_results_when_the_readable_share_is_small():
    reader = make_user()
    mine = make_collection(viewer=[reader])
    other = make_collection()
    for i in range(3):
        add_document(mine, f"mine{i}.md", f"# Note {i}\n\nA short note about topic {i} and gardening.")
    for i in range(30):
        add_document(other, f"other{i}.md", f"# Gardening {i}\n\nWater the tomatoes every morning, tip {i}.")
    hits = retrieval.search(user=reader, query="gardening tomatoes", top_k=3, mode="dense").hits
    assert len(hits) == 3
    assert {h.chunk.collection_id for h in hits} == {mine.pk}
