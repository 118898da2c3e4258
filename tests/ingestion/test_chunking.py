"""Long sections are split under the token budget; every chunk knows where it came from."""

from __future__ import annotations

import random

import pytest

from ingestion.embeddings import count_tokens
from ingestion.pipeline import embedding_text
from tests.ingestion.builders import write_docx, write_pdf

WORDS = (
    "backup restore server nightly snapshot retention policy storage volume encrypted replica cluster "
    "schedule operator failure alert disk network latency recovery archive database index query "
    "configuration deployment rollback version release upgrade monitoring threshold capacity quota"
).split()


def prose(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randrange(6, 22))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def pieces(text: str, embedder) -> int:
    return len(embedder.tokenizer.encode(text, add_special_tokens=False).ids)


def assert_fits(parsed, embedder, budget: int) -> None:
    for chunk in parsed.chunks:
        assert pieces(chunk.text, embedder) <= budget
        full = embedding_text(title=parsed.title, heading_path=chunk.heading_path, text=chunk.text, embedder=embedder)
        assert count_tokens(full, embedder=embedder) <= embedder.max_tokens == 256
        assert full.endswith(chunk.text)  # the prefix may shrink, the text never


def uncovered(parsed) -> str:
    """The non-space characters of the document's text that no chunk covers."""
    covered = {i for c in parsed.chunks for i in range(c.start_char, c.end_char)}
    return "".join(ch for i, ch in enumerate(parsed.text) if not ch.isspace() and i not in covered)


def test_long_section_is_split_by_sentences_under_the_budget(parse, embedder):
    body = "\n\n".join(prose(seed, 12) for seed in range(12))
    parsed = parse("ops.md", f"# Operations\n\n## Backups\n\n{body}\n")

    assert len(parsed.chunks) > 5
    assert {c.heading_path for c in parsed.chunks} == {"Operations > Backups"}
    assert_fits(parsed, embedder, 200)
    # split at sentence ends, not mid-sentence
    assert all(c.text.endswith(".") for c in parsed.chunks)
    # nothing lost: every non-space character of the body is in some chunk
    assert uncovered(parsed) == "#Operations##Backups"  # the heading lines alone


def test_consecutive_chunks_overlap(parse, settings):
    settings.KB_CHUNK_OVERLAP = 20
    parsed = parse("ops.txt", prose(1, 80))

    first, second = parsed.chunks[0], parsed.chunks[1]
    assert second.start_char < first.end_char


@pytest.mark.parametrize(
    "body",
    [
        "x" * 9000,  # one "word" far beyond the budget
        " ".join(random.Random(3).choice(WORDS) for _ in range(1500)),  # no sentence ends at all
        "\n".join(f"{random.Random(n).randrange(10**12):x}.{n}" for n in range(600)),  # ids and numbers
        "東京の天気は晴れです。" * 300,  # no spaces, CJK
    ],
    ids=["one-long-word", "no-punctuation", "identifiers", "cjk"],
)
def test_text_without_usable_sentences_still_fits_and_is_kept(parse, embedder, body):
    parsed = parse("odd.txt", body)

    assert_fits(parsed, embedder, 200)
    assert uncovered(parsed) == ""


def test_chunk_size_follows_the_setting(parse, embedder, settings):
    settings.KB_CHUNK_TOKENS = 50
    settings.KB_CHUNK_OVERLAP = 5
    parsed = parse("ops.txt", prose(2, 60))

    sizes = [pieces(c.text, embedder) for c in parsed.chunks]
    assert max(sizes) <= 50
    assert len(sizes) > 10


def test_an_oversized_chunk_setting_still_leaves_room_for_the_prefix(parse, embedder, settings):
    settings.KB_CHUNK_TOKENS = 1000
    parsed = parse("ops.md", "# A rather long document title here\n\n## And a section heading\n\n" + prose(4, 80))

    assert_fits(parsed, embedder, 256)
    full = embedding_text(
        title=parsed.title, heading_path=parsed.chunks[0].heading_path, text=parsed.chunks[0].text, embedder=embedder
    )
    assert full.startswith("A rather long document title here > And a section heading\n\n")


def _long_docx(document) -> None:
    document.add_heading("Guide", level=1)
    for seed in range(6):
        document.add_paragraph(prose(seed, 10))
    document.add_paragraph("short list item", style="List Bullet")


@pytest.mark.parametrize("kind", ["md", "txt", "html", "pdf", "docx"])
def test_chunk_offsets_locate_the_chunk_text(parse, tmp_path, kind):
    text = prose(5, 70)
    if kind == "md":
        parsed = parse("a.md", f"---\ntitle: T\n---\n# One\n\n{text}\n\n## Two\n\n{prose(6, 5)}\n")
    elif kind == "txt":
        parsed = parse("a.txt", f"\n\n  {text}\r\n\r\n{prose(6, 40)}\n")
    elif kind == "html":
        parsed = parse(
            "a.html",
            f"<html><body><main><h1>One</h1><p>{text}</p><h2>Two</h2><p>{prose(6, 5)}</p></main></body></html>",
        )
    elif kind == "pdf":
        lines = [text[i : i + 90] for i in range(0, len(text), 90)]
        parsed = parse("a.pdf", write_pdf(tmp_path / "a.pdf", ["\n".join(lines[:40]), "\n".join(lines[40:])]))
    else:
        parsed = parse("a.docx", write_docx(tmp_path / "a.docx", _long_docx))

    assert len(parsed.chunks) >= 3
    for chunk in parsed.chunks:
        assert parsed.text[chunk.start_char : chunk.end_char] == chunk.text
        assert chunk.text.strip() == chunk.text != ""
