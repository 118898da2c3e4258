"""Freshness: the newer of two passages that match alike comes first; old passages are flagged."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from kb import retrieval, selectors
from kb.models import Conversation, Document, Message
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db

OLD_POLICY = "# Travel policy\n\nTrain tickets are booked through the travel desk; flights need approval.\n"
NEW_POLICY = "# Travel policy\n\nTrain tickets are booked through the travel portal; flights need approval.\n"


def _aged(document: Document, days: int) -> Document:
    Document.objects.filter(pk=document.pk).update(source_modified=timezone.now() - timedelta(days=days))
    document.refresh_from_db()
    return document


def _hits(documents_and_scores):
    hits = []
    for document, score in documents_and_scores:
        chunk = document.chunks.first()
        hits.append(retrieval.Hit(chunk=chunk, score=score))
    return hits


def test_of_two_passages_that_match_alike_the_newer_comes_first():
    collection = make_collection()
    old = _aged(add_document(collection, "old/travel.md", OLD_POLICY), 900)
    new = _aged(add_document(collection, "new/travel.md", NEW_POLICY), 3)
    ranked = retrieval.prefer_recent(_hits([(old, 0.2), (new, 0.2)]), weight=0.005, half_life_days=365)
    assert [h.chunk.document_id for h in ranked] == [new.pk, old.pk]
    # Off: the order is the fused one.
    unchanged = retrieval.prefer_recent(_hits([(old, 0.2), (new, 0.2)]), weight=0, half_life_days=365)
    assert [h.chunk.document_id for h in unchanged] == [old.pk, new.pk]


def test_recency_never_lifts_an_old_passage_over_a_better_match_one_rank_above():
    collection = make_collection()
    old = _aged(add_document(collection, "old/travel.md", OLD_POLICY), 3000)
    new = _aged(add_document(collection, "new/travel.md", NEW_POLICY), 0)
    # One rank apart at rank 10 of a leg (k=2): 1/12 - 1/13, the smallest step kb shows.
    ranked = retrieval.prefer_recent(_hits([(old, 1 / 12), (new, 1 / 13)]), weight=0.005, half_life_days=365)
    assert [h.chunk.document_id for h in ranked] == [old.pk, new.pk]


def test_documents_of_one_age_keep_their_order_and_their_ties():
    collection = make_collection()
    a = add_document(collection, "a.md", OLD_POLICY)
    b = add_document(collection, "b.md", NEW_POLICY)
    ranked = retrieval.prefer_recent(_hits([(a, 0.3), (b, 0.3)]), weight=0.005, half_life_days=365)
    assert [h.chunk.document_id for h in ranked] == [a.pk, b.pk]
    assert ranked[0].score == ranked[1].score


def test_sources_say_how_old_a_page_is_and_flag_it_past_the_collections_limit():
    collection = make_collection()
    old = _aged(add_document(collection, "old/travel.md", OLD_POLICY), 430)
    new = _aged(add_document(collection, "new/travel.md", NEW_POLICY), 10)
    Document.objects.filter(pk=new.pk).update(url="https://wiki.example/Travel")
    sources = [{"document_id": d.pk, "collection_id": collection.pk} for d in (old, new)]
    assert [s["stale"] for s in selectors.with_freshness(sources)] == [False, False]  # no limit set
    collection.stale_after_days = 365
    collection.save()
    fresh = selectors.with_freshness(sources)
    assert [s["stale"] for s in fresh] == [True, False]
    assert fresh[1]["url"] == "https://wiki.example/Travel" and fresh[0]["modified"] == old.source_modified


def test_a_non_web_address_is_never_offered_as_a_link():
    collection = make_collection()
    document = add_document(collection, "page.md", NEW_POLICY)
    Document.objects.filter(pk=document.pk).update(url="javascript:alert(1)")
    [source] = selectors.with_freshness([{"document_id": document.pk, "collection_id": collection.pk}])
    assert source["url"] == ""


def test_kb_ask_json_sources_carry_the_pages_own_address():
    collection = make_collection("travel")
    document = add_document(collection, "wiki/travel.md", NEW_POLICY)
    Document.objects.filter(pk=document.pk).update(url="https://wiki.example/Travel")
    out = StringIO()
    call_command(
        "kb_ask", "How are train tickets booked?", "--collection", "travel", "--no-generate", "--json", stdout=out
    )
    record = json.loads(out.getvalue().strip().splitlines()[-1])
    assert record["sources"][0]["url"] == "https://wiki.example/Travel"


def test_an_owner_sets_the_limit_and_the_answer_page_flags_the_old_page(client):
    owner = make_user()
    collection = make_collection("travel", owner=owner)
    old = _aged(add_document(collection, "wiki/travel.md", OLD_POLICY), 800)
    Document.objects.filter(pk=old.pk).update(url="https://wiki.example/Travel")
    client.force_login(owner)
    response = client.post(reverse("collection_settings", args=[collection.pk]),
                           {"name": "travel", "description": "", "stale_after_days": "365"})  # fmt: skip
    assert response.status_code == 302
    collection.refresh_from_db()
    assert collection.stale_after_days == 365
    chunk = old.chunks.first()
    conversation = Conversation.objects.create(user=owner, title="travel")
    conversation.collections.set([collection])
    Message.objects.create(
        conversation=conversation, question="How are train tickets booked?", answer="Through the travel desk [1].",
        status=Message.Status.COMPLETE, sources=[{
            "n": 1, "chunk_id": chunk.pk, "document_id": old.pk, "collection_id": collection.pk, "title": old.title,
            "source": old.source_path, "heading": None, "page": None, "score": 1.0, "text": chunk.text,
        }],
    )  # fmt: skip
    page = client.get(reverse("conversation_detail", args=[conversation.pk])).content.decode()
    assert "may be out of date" in page and 'href="https://wiki.example/Travel"' in page and "updated" in page
