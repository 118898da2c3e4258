"""What gets embedded, and embedding it: unit vectors, batches, progress, a window never exceeded."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from ingestion.embeddings import count_tokens
from ingestion.pipeline import embed_texts, embedding_text


class FakeEmbedder:
    """Returns a fixed, unnormalised vector and records each batch."""

    def __init__(self, tokenizer, *, dim: int = 3, vector: list[float] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = 256
        self.dim = dim
        self.vector = vector or [3.0, 4.0, 0.0]
        self.batches: list[list[str]] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(list(texts))
        return [list(self.vector) for _ in texts]


def test_embedding_text_puts_title_and_heading_path_before_the_text(embedder):
    text = embedding_text(
        title="Operations Handbook", heading_path="Backups > Schedule", text="Run it nightly.", embedder=embedder
    )

    assert text == "Operations Handbook > Backups > Schedule\n\nRun it nightly."


def test_embedding_text_does_not_repeat_a_title_that_is_the_first_heading(embedder):
    text = embedding_text(title="Backups", heading_path="Backups > Schedule", text="Run it nightly.", embedder=embedder)

    assert text == "Backups > Schedule\n\nRun it nightly."


def test_embedding_text_without_title_or_headings_is_the_text(embedder):
    assert embedding_text(title="", heading_path="", text="Just this.", embedder=embedder) == "Just this."


def test_a_very_long_heading_prefix_is_shortened_never_the_text(embedder):
    headings = [f"Level {n} heading about " + "replication topology " * 6 for n in range(12)]
    body = " ".join(["The replica catches up within seconds."] * 30)  # ~200 word pieces
    text = embedding_text(title="Storage", heading_path=" > ".join(headings), text=body, embedder=embedder)

    assert count_tokens(text, embedder=embedder) <= 256
    assert text.endswith("\n\n" + body)
    assert text.startswith("Storage > ... > Level 11 heading") or text.startswith("Level 11 heading")


def test_embed_texts_returns_unit_vectors_of_the_configured_size(embedder):
    vectors = embed_texts(["Backups run nightly.", "The cafeteria opens at noon."])

    assert [len(v) for v in vectors] == [384, 384]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(embedder):
    query, related, unrelated = embed_texts(
        [
            "How often are the servers backed up?",
            "Backups of every server run each night at 2 am.",
            "The cafeteria serves pasta on Fridays.",
        ],
        embedder=embedder,
    )

    assert np.dot(query, related) > np.dot(query, unrelated) + 0.2


def test_text_past_128_word_pieces_is_embedded_too(embedder):
    # The model's tokenizer file truncates at 128; the model must read its whole 256 window.
    shared = " ".join(["The quarterly report covers revenue and operating costs."] * 16)
    assert 128 < count_tokens(shared, embedder=embedder) < 240

    first, second = embed_texts(
        [shared + " Penguins live in Antarctica.", shared + " Volcanoes erupt lava."], embedder=embedder
    )

    assert np.dot(first, second) < 0.99


def test_embed_texts_batches_and_reports_progress(embedder, settings):
    settings.KB_EMBED_BATCH_SIZE = 2
    fake = FakeEmbedder(embedder.tokenizer)
    calls = []

    vectors = embed_texts(
        [f"text {n}" for n in range(5)], progress=lambda done, total: calls.append((done, total)), embedder=fake
    )

    assert [len(b) for b in fake.batches] == [2, 2, 1]
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert vectors == [pytest.approx([0.6, 0.8, 0.0])] * 5  # normalised even when the embedder is not


def test_embed_texts_of_nothing_calls_no_model(embedder):
    fake = FakeEmbedder(embedder.tokenizer)

    assert embed_texts([], embedder=fake) == []
    assert fake.batches == []


def test_a_model_of_the_wrong_size_is_a_configuration_error(embedder):
    fake = FakeEmbedder(embedder.tokenizer, dim=384, vector=[1.0, 0.0, 0.0])

    with pytest.raises(ImproperlyConfigured, match="KB_EMBED_DIM"):
        embed_texts(["text"], embedder=fake)


def test_texts_sorted_by_length_for_batching_come_back_in_their_own_order(embedder, settings):
    settings.KB_EMBED_BATCH_SIZE = 2
    texts = ["Short.", "A much longer text about " + "replication and failover " * 12, "Medium length text here."]

    together = embed_texts(texts, embedder=embedder)
    alone = [embed_texts([t], embedder=embedder)[0] for t in texts]

    # Cosines, not equality: bf16 (the default on a CPU with AMX) rounds a little differently
    # with another batch's padding. A vector come back in the wrong place would be far below.
    assert np.sum(np.asarray(together) * np.asarray(alone), axis=1).min() > 0.9999


def test_no_chunk_of_a_long_structured_document_is_cut_off_before_embedding(parse, embedder):
    from ingestion.pipeline import embedding_text

    long_heading = "Configuring streaming replication between the primary and every standby server"
    sections = [f"## {long_heading} part {n}\n\n" + " ".join(
        f"Sentence {i} explains parameter wal_level_{n}_{i}, its default and when to raise it." for i in range(60)
    ) for n in range(4)]  # fmt: skip
    parsed = parse("manual.md", "# Server Administration and Replication Guide\n\n" + "\n\n".join(sections))

    assert len(parsed.chunks) > 8
    for chunk in parsed.chunks:
        text = embedding_text(title=parsed.title, heading_path=chunk.heading_path, text=chunk.text, embedder=embedder)
        assert len(embedder.tokenizer.encode(text).ids) <= embedder.max_tokens == 256
        assert text.endswith(chunk.text) and long_heading in text  # whole text, with its context
    covered = "".join(c.text for c in parsed.chunks)
    assert all(f"wal_level_{n}_{i}," in covered for n in range(4) for i in range(60))
