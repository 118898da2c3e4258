"""Answers kb vouches for, end to end through the services and the page's stream: the quoted
(extractive) answer before any model output, every generated sentence checked, loops cut off,
empty answers failed, and the same decisions in the page, the JSON API and kb_ask."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django.urls import reverse

from kb.models import Message
from kb.services.conversations import EMPTY_ANSWER, LOOPING, NO_SOURCE_ANSWER, message_ask, message_quote
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS
from tests.factories import add_document, ask, make_collection, make_user
from tests.helpers import read_stream
from tests.standins import Behaviour, failing_model_server

pytestmark = pytest.mark.django_db

INVENTED = ["To restore, call ", "`logging.rotate()` ", "first [1]. ", "The backup runs ", "nightly at ",
            "02:00 [2]."]  # fmt: skip


def _page(user, message) -> str:
    client = Client()
    client.force_login(user)
    return client.get(message.conversation.get_absolute_url()).content.decode()


def _ask_on_the_page(question: str):
    """Ask as a reader does, through the collection page's form: (user, message)."""
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    client = Client()
    client.force_login(user)
    response = client.post(reverse("collection_ask", args=[collection.pk]), {"question": question})
    assert response.status_code in (200, 302)
    return user, Message.objects.get(question=question)


def test_the_quoted_answer_is_on_the_page_the_ask_returns_before_any_model_output(settings):
    settings.KB_LLM_URL = "http://127.0.0.1:9"  # nothing listens: no model output can have arrived
    user, message = _ask_on_the_page("When does the database backup run?")
    assert message.mode == "auto" and message.status == Message.Status.PENDING
    [quoted] = message.extractive["sentences"]
    assert quoted["text"] == "The database backup runs nightly at 02:00 and keeps fourteen copies."
    assert quoted["citations"] == [1]
    html = _page(user, message)  # the page a reader sees while the model has not written a word
    assert "From the sources" in html and "runs nightly at 02:00" in html


def test_the_quote_is_worked_out_after_the_model_was_asked_so_it_costs_the_first_token_nothing():
    user, message = ask("When does the database backup run?")
    assert message.extractive == {}  # message_ask asks no embedding of the quote before the model starts
    assert message_quote(user=user, message=message).extractive["sentences"]
    message.refresh_from_db()
    assert message.extractive["sentences"][0]["citations"] == [1]
    with pytest.raises(PermissionError):
        message_quote(user=make_user(), message=message)


def test_with_the_model_server_down_the_quoted_answer_still_shows(settings):
    with failing_model_server(Behaviour(status=503)) as (url, _):
        settings.KB_LLM_URL = url
        user, message = _ask_on_the_page("When does the database backup run?")
        events = read_stream(user, message)
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert "runs nightly at 02:00" in events[-1][1] and "From the sources" in events[-1][1]


def test_an_invented_identifier_is_marked_and_a_wrong_number_corrected(settings):
    user, message = ask("When does the database backup run?")
    with failing_model_server(Behaviour(tokens=INVENTED)) as (url, _):
        settings.KB_LLM_URL = url
        events = read_stream(user, message)
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE
    assert [(s["supported"], s["citations"], s["written"]) for s in message.sentences] == [
        (False, [], [1]),  # logging.rotate is in no source: never shown as cited
        (True, [1], [2]),  # there is no source 2: kb cites the one that says it
    ]
    done = events[-1][1]
    assert '<mark class="unsupported"' in done and "(not found in the sources)" in done
    assert "1 of 2 statements was not found in the sources" in done


def test_a_looping_model_is_cut_off_and_what_it_wrote_is_kept_once(settings):
    user, message = ask()
    loop = ["The backup runs nightly at 02:00. "] * 50
    # Paced as a model writes, so the loop is noticed while generation is still going.
    with failing_model_server(Behaviour(tokens=loop, delay_between=0.05)) as (url, record):
        settings.KB_LLM_URL = url
        read_stream(user, message)
        assert record.finished.wait(5)
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE and message.error == LOOPING
    assert message.answer.count("runs nightly") == 1
    assert record.tokens_sent < 50, "generation must stop upstream"
    assert record.requests[0]["frequency_penalty"] > 0


def test_an_empty_answer_is_a_failure_not_a_complete_answer(settings):
    user, message = ask()
    with failing_model_server(Behaviour(tokens=[])) as (url, _):
        settings.KB_LLM_URL = url
        events = read_stream(user, message)
    message.refresh_from_db()
    assert (message.status, message.error) == (Message.Status.FAILED, EMPTY_ANSWER)
    assert EMPTY_ANSWER in events[-1][1]


def test_extractive_mode_answers_with_quotes_and_calls_no_model(settings):
    settings.KB_ANSWER_MODE = "extractive"
    settings.KB_LLM_URL = "http://127.0.0.1:9"  # nothing listens: a model call would fail the test
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = message_ask(user=user, question="When does the database backup run?", collections=[collection])
    assert message.status == Message.Status.COMPLETE and message.mode == "extractive"
    assert message.answer == "The database backup runs nightly at 02:00 and keeps fourteen copies [1]."
    assert all(s["supported"] for s in message.sentences)


def test_extractive_mode_abstains_when_no_sentence_answers(settings):
    settings.KB_ANSWER_MODE = "extractive"
    # Retrieval keeps its passages (no abstention check refuses): the quoting has to abstain.
    settings.KB_MIN_SIMILARITY = settings.KB_MIN_KNOWN = settings.KB_MIN_SIMILARITY_UNAGREED = -1.0
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = message_ask(user=user, question="What is the capital of Peru?", collections=[collection])
    assert message.sources and message.extractive["sentences"] == []
    refusal = f"{NO_SOURCE_ANSWER} None of them mentions “capital” or “Peru”."
    assert (message.status, message.answer) == (Message.Status.NO_ANSWER, refusal)


def test_the_json_api_shows_the_same_decisions_as_the_page(settings):
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    _, raw = api_token_create(user=user, name="test")
    body = {"question": "When does the database backup run?", "collections": [collection.pk], "stream": False}
    with failing_model_server(Behaviour(tokens=INVENTED)) as (url, _):
        settings.KB_LLM_URL = url
        response = Client().post(
            reverse("api_ask"), body, content_type="application/json", headers={"Authorization": f"Bearer {raw}"}
        )
    record = response.json()
    assert (record["mode"], record["abstained"], record["status"]) == ("auto", False, "complete")
    assert record["sentences"] == [
        {"text": "To restore, call `logging.rotate()` first.", "citations": [], "supported": False},
        {"text": "The backup runs nightly at 02:00.", "citations": [1], "supported": True},
    ]
    assert record["extractive"][0]["citations"] == [1]
    assert record["answer"] == "".join(INVENTED)  # the model's own text stays available, unchanged
    message = Message.objects.get(pk=record["message"])
    assert "(not found in the sources)" in _page(user, message)


def test_each_sentence_is_checked_while_the_answer_streams_not_at_the_end(settings):
    user, message = ask("When does the database backup run?")
    # At a model's pace (a piece every half second): a check takes milliseconds, so each sentence
    # is shown checked while the model writes the next. The text never waits for a check.
    with failing_model_server(Behaviour(tokens=INVENTED, delay_between=0.5)) as (url, _):
        settings.KB_LLM_URL = url
        events = read_stream(user, message)
    kinds = [event for event, _ in events if event != "state"]  # "Writing…" comes first, before any token
    assert kinds[0] == "token"  # the first token is not held back for checking
    first_check = kinds.index("sentence")
    assert "token" in kinds[first_check:], "the first sentence is shown checked before the model has finished"
    sentences = [data for event, data in events if event == "sentence"]
    assert '<mark class="unsupported"' in sentences[0] and "logging.rotate()" in sentences[0]
    assert 'class="cite"' in sentences[1] and "[1]" in sentences[1] and "<mark" not in sentences[1]
    # After each checked sentence the draft holds only what is not checked yet.
    drafts = [data for event, data in events if event == "draft"]
    assert drafts[0].startswith("The backup runs") and drafts[-1] == ""


def test_the_text_streams_on_at_the_models_pace_while_a_slow_check_runs(settings, monkeypatch):
    # With many answers at once, checks wait their turn for the embedding model: the reader still
    # gets the text as fast as the model writes it, and the checked sentences as they are decided.
    from kb import verification

    real = verification.embed

    def queued(texts):  # provoked: a check that waits its turn (the model here is never that busy)
        time.sleep(1)
        return real(texts)

    monkeypatch.setattr(verification, "embed", queued)
    user, message = ask("When does the database backup run?")
    pieces = ["The backup runs ", "nightly at ", "02:00 [1]. ", "It keeps ", "fourteen copies [1]. ", "To restore, ",
              "run `kb-restore --date` ", "with the date [1]."]  # fmt: skip
    with failing_model_server(Behaviour(tokens=pieces, delay_between=0.02)) as (url, _):
        settings.KB_LLM_URL = url
        events = read_stream(user, message)
    kinds = [event for event, _ in events if event not in ("state", "draft")]
    last_token = max(i for i, kind in enumerate(kinds) if kind == "token")
    assert kinds.index("sentence") > last_token, "a piece waited for a check"
    assert kinds[last_token + 1 :] == ["sentence"] * 3 + ["done"]
    sentences = [data for event, data in events if event == "sentence"]
    assert 'class="cite"' in sentences[0] and "<mark" not in sentences[0], sentences  # decided as always
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE and message.answer == "".join(pieces)
