"""The OpenAI-compatible API, through the official `openai` client against uvicorn and the real model server.

The demo model (SmolLM2-135M) ignores instructions and may write nothing: these tests check
kb's part (the models a token sees, what is shown, its citations, scoping, abstention), not prose.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import httpx
import openai
import pytest
from django.urls import resolve

from kb import selectors
from kb.api import answers
from kb.models import Chunk, Message
from kb.services.conversations import NO_SOURCE_ANSWER
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user
from tests.helpers import kb_web_server

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "When does the database backup run?"
SALARIES = "# Salaries\n\nThe backup administrator earns 90,000 a year.\n"


@pytest.fixture
def world():
    reader, other = make_user("reader"), make_user("other")
    ops = make_collection("ops", viewer=[reader])
    hr = make_collection("hr", viewer=[reader, other])
    secret = make_collection("secret")
    add_document(ops, "backups.md", BACKUPS)
    add_document(hr, "vacation.md", VACATION)
    add_document(secret, "salaries.md", SALARIES)
    return {"reader": reader, "other": other, "ops": ops, "hr": hr, "secret": secret,
            "reader_token": api_token_create(user=reader, name="openai")[1],
            "other_token": api_token_create(user=other, name="openai")[1]}  # fmt: skip


def client(web_server: str, token: str) -> openai.OpenAI:
    # No retries: every request is one request, as the assertions count them.
    return openai.OpenAI(base_url=f"{web_server}/v1", api_key=token, max_retries=0, timeout=300)


def _chunk_of(url: str, web_server: str) -> Chunk:
    """The passage a citation's url names: an absolute address of kb's own passage page."""
    assert url.startswith(f"{web_server}/passages/"), url
    match = resolve(urlparse(url).path)
    assert match.url_name == "chunk_detail"
    return Chunk.objects.get(pk=match.kwargs["pk"])


def _shown(message_pk: int, user) -> str:
    message = Message.objects.get(pk=message_pk)
    return answers.shown_text(message, selectors.message_sources(user=user, message=message))


def test_models_are_kb_and_exactly_the_collections_the_token_owner_reads(web_server, world):
    api = client(web_server, world["reader_token"])
    listed = {m.id: m for m in api.models.list()}
    assert set(listed) == {"kb", f"kb/{world['ops'].pk}", f"kb/{world['hr'].pk}"}
    assert {m.owned_by for m in listed.values()} == {"kb"}
    assert listed[f"kb/{world['ops'].pk}"].model_extra["name"] == "ops"
    assert api.models.retrieve(f"kb/{world['hr'].pk}").model_extra["name"] == "hr"
    assert api.models.retrieve("kb").id == "kb"


def test_an_answer_is_what_kb_shows_with_citations_into_kb(web_server, world):
    api = client(web_server, world["reader_token"])
    completion = api.chat.completions.create(
        model=f"kb/{world['ops'].pk}", messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    content = completion.choices[0].message.content
    citations = completion.model_extra["citations"]
    assert citations and [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    assert {_chunk_of(c["url"], web_server).collection_id for c in citations} == {world["ops"].pk}
    assert citations[0]["source"] == "backups.md" and citations[0]["title"].startswith("Backups")
    # kb's own part, whatever the model wrote: the sentence quoted from the passage, with its [n].
    assert content.startswith(answers.QUOTED_LABEL) and "02:00" in content
    assert {int(n) for n in re.findall(r"\[(\d+)\]", content)} <= {c["n"] for c in citations}
    kb = completion.model_extra["kb"]
    message = Message.objects.get(pk=kb["message"])
    assert message.conversation.user == world["reader"] and message.question == QUESTION
    assert content == _shown(message.pk, world["reader"])
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0


def test_a_stream_sends_role_then_content_then_citations_then_usage(web_server, world):
    api = client(web_server, world["reader_token"])
    stream = api.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "stop"
    citations = final[0].model_extra["citations"]
    cited = [_chunk_of(c["url"], web_server).collection_id for c in citations]
    assert cited[0] == world["ops"].pk and set(cited) <= {world["ops"].pk, world["hr"].pk}  # never "secret"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert content == _shown(final[0].model_extra["kb"]["message"], world["reader"])


def test_earlier_turns_make_the_follow_up_search_as_in_a_kb_conversation(web_server, world):
    api = client(web_server, world["reader_token"])
    completion = api.chat.completions.create(
        model=f"kb/{world['ops'].pk}",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "It runs nightly at 02:00 [1]."},
            {"role": "user", "content": "How many copies does it keep?"},
        ],
    )
    message = Message.objects.get(pk=completion.model_extra["kb"]["message"])
    assert message.question == "How many copies does it keep?"
    assert message.search_query == f"{QUESTION} How many copies does it keep?"


def test_a_question_the_collections_cannot_answer_is_kbs_refusal_without_sources(web_server, world):
    api = client(web_server, world["reader_token"])
    completion = api.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "zebra migration across the savanna"}]
    )
    content = completion.choices[0].message.content
    assert content.startswith(NO_SOURCE_ANSWER) and "zebra" in content
    assert completion.model_extra["citations"] == [] and completion.model_extra["kb"]["abstained"] is True
    message = Message.objects.get(pk=completion.model_extra["kb"]["message"])
    assert message.status == Message.Status.NO_ANSWER and message.answer == content


def test_another_users_token_cannot_list_ask_or_detect_a_collection(web_server, world):
    api = client(web_server, world["other_token"])
    assert {m.id for m in api.models.list()} == {"kb", f"kb/{world['hr'].pk}"}
    errors = {}
    for name, model in (("forbidden", f"kb/{world['ops'].pk}"), ("missing", "kb/999999")):
        with pytest.raises(openai.NotFoundError) as retrieve:
            api.models.retrieve(model)
        with pytest.raises(openai.NotFoundError) as ask:
            api.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}])
        assert retrieve.value.code == ask.value.code == "model_not_found"
        errors[name] = [e.value.body["message"].replace(model, "<id>") for e in (retrieve, ask)]
    assert errors["forbidden"] == errors["missing"]
    assert not Message.objects.filter(conversation__user=world["other"]).exists()
    # Asking everything the token's owner reads never reaches the others' passages.
    completion = api.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "What does the backup administrator earn?"}]
    )
    cited = {_chunk_of(c["url"], web_server).collection_id for c in completion.model_extra["citations"]}
    assert cited <= {world["hr"].pk}
    content = completion.choices[0].message.content
    assert "90,000" not in content and "02:00" not in content


def test_a_bad_or_missing_token_is_401_in_openais_shape(web_server, world):
    with pytest.raises(openai.AuthenticationError) as refused:
        client(web_server, "kb_not-a-real-token").models.list()
    assert refused.value.code == "invalid_api_key"
    response = httpx.post(f"{web_server}/v1/chat/completions", json={"model": "kb", "messages": []})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_deactivated_users_token_is_refused(web_server, world):
    world["reader"].is_active = False
    world["reader"].save()
    with pytest.raises(openai.AuthenticationError):
        client(web_server, world["reader_token"]).models.list()


DEEP = "[" * 100_000 + "]" * 100_000


def _user(content) -> list:
    return [{"role": "user", "content": content}]


MALFORMED = [
    ("not json", b"{'model': 'kb'"),
    ("a list", []),
    ("deep nesting", DEEP.encode()),
    ("no model", {"messages": _user("q?")}),
    ("a number as model", {"model": 7, "messages": _user("q?")}),
    ("no messages", {"model": "kb"}),
    ("empty messages", {"model": "kb", "messages": []}),
    ("messages as text", {"model": "kb", "messages": "q?"}),
    ("a message as text", {"model": "kb", "messages": ["q?"]}),
    ("an unknown role", {"model": "kb", "messages": [{"role": "wizard", "content": "q?"}]}),
    ("a role as a list", {"model": "kb", "messages": [{"role": ["user"], "content": "q?"}]}),
    ("an assistant last", {"model": "kb", "messages": [{"role": "assistant", "content": "a"}]}),
    ("an empty question", {"model": "kb", "messages": _user("   ")}),
    ("a huge question", {"model": "kb", "messages": _user("backup " * 10_000)}),
    ("an image", {"model": "kb", "messages": _user([{"type": "image_url", "image_url": {"url": "x"}}])}),
    ("content as a number", {"model": "kb", "messages": _user(12)}),
    ("stream as text", {"model": "kb", "messages": _user("q?"), "stream": "yes"}),
    ("include_usage as text", {"model": "kb", "messages": _user("q?"), "stream_options": {"include_usage": 1}}),
    ("two answers", {"model": "kb", "messages": _user("q?"), "n": 2}),
    ("negative max_tokens", {"model": "kb", "messages": _user("q?"), "max_tokens": -1}),
    ("max_tokens as a bool", {"model": "kb", "messages": _user("q?"), "max_tokens": True}),
    ("temperature as text", {"model": "kb", "messages": _user("q?"), "temperature": "hot"}),
]


def test_malformed_requests_are_400_in_openais_shape_never_500(transactional_db, world):
    headers = {"Authorization": f"Bearer {world['reader_token']}", "Content-Type": "application/json"}
    # Every request to ask counts towards KB_ASK_PER_MINUTE, malformed ones too: these are more than 20.
    with kb_web_server({"KB_ASK_PER_MINUTE": "1000"}) as web:
        for name, body in MALFORMED:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = httpx.post(f"{web}/v1/chat/completions", content=content, headers=headers, timeout=60)
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"], name
    assert not Message.objects.exists()


def test_huge_values_and_wrong_methods_are_answered_not_crashed(web_server, world):
    headers = {"Authorization": f"Bearer {world['reader_token']}"}
    url = f"{web_server}/v1/chat/completions"
    huge_id = {"model": "kb/" + "9" * 40, "messages": _user(QUESTION)}
    assert httpx.post(url, json=huge_id, headers=headers).json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{web_server}/v1/models/kb/{'9' * 40}", headers=headers).status_code == 404
    # Numbers kb leaves to its settings are accepted at any size (this question needs no model).
    huge = {"model": "kb", "messages": _user("zebra migration across the savanna"), "max_tokens": 10**40,
            "temperature": 1e308}  # fmt: skip
    response = httpx.post(url, json=huge, headers=headers, timeout=60)
    assert response.status_code == 200 and response.json()["kb"]["abstained"]
    wrong = httpx.get(url, headers=headers)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST" and wrong.json()["error"]["message"]
    assert httpx.post(f"{web_server}/v1/models", headers=headers).status_code == 405
