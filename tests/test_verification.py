"""kb.verification: sentences checked against their sources with the real embedding model."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from kb import verification as v

BACKUP = {
    "n": 1,
    "text": "The database backup runs nightly at 02:00 UTC and keeps fourteen copies. To restore, stop the "
    "application, then run `kb-restore --date` with the date of the copy.",
}
LEAVE = {"n": 2, "text": "Up to five unused vacation days carry over into the next year."}
SOURCES = [BACKUP, LEAVE]


@pytest.fixture(scope="module")
def decide():
    def _decide(answer: str, sources=SOURCES):
        return v.verify(answer, sources, v.embed)

    return _decide


def test_a_sentence_a_source_says_is_supported_and_cited(decide):
    [sentence] = decide("The backup runs every night at 02:00 UTC [1].")
    assert sentence.supported and sentence.citations == [1] and sentence.written == [1]


def test_an_invented_identifier_makes_a_sentence_unsupported_and_uncited(decide):
    [sentence] = decide("To restore, call `logging.rotate()` before the restore script [1].")
    assert not sentence.supported and sentence.citations == []
    assert sentence.unknown == ["logging.rotate"]


def test_a_number_no_source_holds_makes_a_sentence_unsupported(decide):
    [sentence] = decide("Up to twelve, that is 12 unused vacation days carry over [2].")
    assert not sentence.supported and "12" in sentence.unknown


def test_a_wrong_citation_is_replaced_by_the_source_that_supports_the_sentence(decide):
    [sentence] = decide("Five unused vacation days carry over into the next year [1].")
    assert sentence.supported and sentence.written == [1] and sentence.citations == [2]


def test_a_missing_citation_is_added(decide):
    [sentence] = decide("The backup keeps fourteen copies.")
    assert sentence.supported and sentence.written == [] and sentence.citations == [1]


def test_a_claim_about_something_else_is_unsupported(decide):
    [sentence] = decide("The office cafeteria serves lunch between noon and two.")
    assert not sentence.supported and sentence.citations == []


def test_a_code_block_whose_commands_are_in_a_source_is_supported(decide):
    sentences = decide("Run this:\n\n```\nkb-restore --date\n```\n")
    assert [s.code for s in sentences] == [False, True]
    assert sentences[1].supported and sentences[1].citations == [1]


def test_a_code_block_with_an_invented_command_is_unsupported(decide):
    [_, block] = decide("Run this:\n\n```\nkb-backup --rotate-now\n```\n")
    assert not block.supported and "--rotate-now" in block.unknown


def test_compose_marks_unsupported_sentences_and_places_citations_before_the_full_stop(decide):
    sentences = decide("The backup runs nightly at 02:00 UTC. Call `logging.rotate()` first.")
    shown = v.compose(sentences)
    assert shown.startswith("The backup runs nightly at 02:00 UTC [1].")
    assert f"{v.UNSUPPORTED_OPEN}Call `logging.rotate()` first.{v.UNSUPPORTED_CLOSE}" in shown
    assert "logging" not in v.compose(sentences, hide_unsupported=True)


def test_without_the_embedding_model_nothing_is_vouched_for(decide):
    [sentence] = v.verify("The backup runs nightly at 02:00 UTC [1].", SOURCES, None)
    assert not sentence.supported and sentence.citations == []


def test_the_extractive_answer_quotes_the_source_sentence_that_answers():
    quoted = v.extract("How many vacation days carry over?", SOURCES, v.embed)
    assert quoted["sentences"][0] == {"text": LEAVE["text"], "citations": [2]}


def test_the_extractive_answer_is_empty_when_no_sentence_answers():
    assert v.extract("What is the capital of Peru?", SOURCES, v.embed)["sentences"] == []


@pytest.mark.parametrize(
    ("pieces", "loops"),
    [
        (["Backups run nightly. "] * 3, True),
        (["```\n"] + ["logging.rotate(path)\n"] * 3, True),
        (["Backups run nightly. ", "They keep fourteen copies. ", "Restore with the script."], False),
    ],
)
def test_the_repetition_guard_trips_on_the_third_repeat(pieces, loops):
    guard = v.RepetitionGuard(3)
    assert any(guard.feed(p) for p in pieces) == loops
    if loops:
        assert guard.text[: guard.cut].count(pieces[1].strip()) == 1


def test_a_stream_check_whose_embedding_model_fails_vouches_for_nothing_and_keeps_going():
    from ingestion.errors import EmbedderUnavailable

    def unavailable(texts):
        raise EmbedderUnavailable("The embedding server did not answer.")

    check = v.StreamCheck(SOURCES, unavailable)
    check.add("The backup runs nightly at 02:00 UTC [1]. It keeps fourteen copies [1].")
    decided = [c.sentence for c in check.ready(final=True)]
    assert [(s.supported, s.citations) for s in decided] == [(False, []), (False, [])]


def test_a_stream_check_decides_each_sentence_once_as_it_completes():
    check = v.StreamCheck(SOURCES, v.embed)
    assert not check.add("The backup runs nightly at 02:00 UTC")
    assert check.add(". It keeps")
    [first] = check.ready()
    assert first.sentence.text == "The backup runs nightly at 02:00 UTC." and first.sentence.supported
    check.add(" fourteen copies.")
    assert [c.sentence.text for c in check.ready(final=True)] == ["It keeps fourteen copies."]
    assert len(check.decided) == 2


def test_abbreviations_are_not_taken_for_dotted_names():
    assert v.identifiers("It keeps copies, i.e. fourteen of them, e.g. for audits; see os.path.") == {"os.path"}


def test_a_connective_is_neither_claimed_nor_cited(decide):
    [sentence] = decide("Here's an example:")
    assert sentence.supported and sentence.citations == [] and sentence.score == 0.0


def test_the_repetition_guard_reads_a_long_unbroken_sentence_in_linear_time():
    guard = v.RepetitionGuard(3)
    started = time.perf_counter()
    # Searching the whole unended sentence again at every piece took 46 ms a piece at 400 words,
    # growing with the square of the length: about a minute for these 800.
    assert not any(guard.feed(f"word{i} ") for i in range(800))
    assert not guard.feed("and then it ends. ")
    assert time.perf_counter() - started < 1


def test_a_passage_embedded_for_the_quoted_answer_is_not_embedded_again_for_the_check(monkeypatch):
    source = {"n": 1, "text": f"Volume {uuid.uuid4().hex[:8]} keeps fourteen nightly copies. A restore takes an hour."}
    embedded = []
    real = v.pipeline.embed_texts

    def counted(texts, **kwargs):
        embedded.extend(texts)
        return real(texts, **kwargs)

    monkeypatch.setattr(v.pipeline, "embed_texts", counted)
    v.extract("How many copies does the volume keep?", [source], v.embed)
    check = v.StreamCheck([source], v.embed)
    check.add("The volume keeps fourteen nightly copies [1].")
    check.ready(final=True)
    assert embedded.count(source["text"].split(". ")[0] + ".") == 1


def _held_first_call(monkeypatch, *, callers: int, fail_second: bool = False):
    """Record each model call's texts; the first call waits until the other callers queue behind it.

    The wait only orders the threads (the real model is fast enough that they might not overlap);
    the embedding itself is the real model's.
    """
    real, calls = v.pipeline.embed_texts, []
    batcher = v._batcher(v.embeddings.get_embedder(None, questions=True))

    def recorded(texts, *, embedder=None, **kwargs):
        calls.append(list(texts))
        if len(calls) == 1:
            deadline = time.monotonic() + 10
            while len(batcher.waiting) < callers - 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        elif fail_second and len(calls) == 2:
            raise v.EmbedderUnavailable("the model went away")
        return real(texts, embedder=embedder, **kwargs)

    monkeypatch.setattr(v.pipeline, "embed_texts", recorded)
    return calls


def _first_then_the_rest(threads: list[threading.Thread], calls: list) -> None:
    """Start the first thread; once its model call is under way, the others; wait for all."""
    threads[0].start()
    while not calls:
        time.sleep(0.001)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_sentences_checked_at_the_same_moment_are_embedded_in_one_model_call(monkeypatch):
    sentences = [[f"Sentence {uuid.uuid4().hex} number {i} about backups."] for i in range(8)]
    alone = [v.pipeline.embed_texts(s, embedder=v.embeddings.get_embedder(None, questions=True)) for s in sentences]
    calls = _held_first_call(monkeypatch, callers=len(sentences))
    results: dict[int, object] = {}
    _first_then_the_rest(
        [threading.Thread(target=lambda i=i: results.__setitem__(i, v.embed(sentences[i]))) for i in range(8)], calls
    )
    # The first ran at once, alone; the seven that came while it ran went together.
    assert [len(c) for c in calls] == [1, 7]
    for i in range(len(sentences)):
        assert results[i].shape == (1, 384)
        assert abs(float(results[i][0] @ alone[i][0]) - 1) < 1e-4, "each caller gets its own sentence's vector"


def test_a_failed_batched_call_reaches_every_caller_in_it_and_the_next_call_runs(monkeypatch):
    sentences = [[f"Another {uuid.uuid4().hex} sentence {i}."] for i in range(4)]
    calls = _held_first_call(monkeypatch, callers=len(sentences), fail_second=True)
    outcome: dict[int, object] = {}

    def check(i):
        try:
            outcome[i] = v.embed(sentences[i]).shape
        except v.EmbedderUnavailable as exc:
            outcome[i] = str(exc)

    _first_then_the_rest([threading.Thread(target=check, args=(i,)) for i in range(4)], calls)
    assert outcome[0] == (1, 384)
    assert [outcome[i] for i in (1, 2, 3)] == ["the model went away"] * 3
    assert v.embed([f"Later {uuid.uuid4().hex}."]).shape == (1, 384)  # nobody is left holding the model


def test_a_stream_check_knows_when_a_sentence_is_whole_and_not_before():
    check = v.StreamCheck(SOURCES, v.embed)
    assert not any(check.add(f"word{i} ") for i in range(300))  # a long list with no end yet
    assert not check.add("ends here.")  # whole only once the next sentence begins
    assert check.add(" The backup runs nightly")
    [decided] = check.ready()
    assert decided.sentence.text.startswith("word0")
    assert check.text[decided.upto :].strip() == "The backup runs nightly"
    assert not check.behind()
    assert not check.add(" at 02:00 UTC")
    assert check.add(".\n\n- A list item")  # a paragraph break ends it too
