"""Malformed, huge and unexpected input to every JSON endpoint and every form: never a 500 (issue 17).

Hypothesis draws wrong JSON types, nested objects, huge strings, unicode, NUL bytes, negative
and huge ids and bad content types. Whatever comes, kb answers with a status under 500: a
refusal a person (or a client) can act on, never a traceback. A 429 from the rate limits
counts as a refusal too. Each request runs in a savepoint rolled back afterwards, so one
example's writes (a deleted collection, a new token) never change what the next one reaches.
"""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb.models import Conversation, Message
from kb.services.tokens import api_token_create
from tests.factories import add_document, make_collection, make_group, make_user

pytestmark = pytest.mark.django_db

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
MORE = settings(FUZZ, max_examples=50)  # spread over many forms

# Text as clients send it: any unicode but lone surrogates (no client can encode those), and the odd cases.
ODD = ["", " ", "\x00", "a\x00b", "²", "١٢", "-1", "0", "9" * 40, "1e309", "NaN", "../../etc/passwd", "C:\\x",
       "<script>alert(1)</script>", "x" * 100_000, "🦓" * 500, "\u202e\u200b", "kb/", "kb/0", "kb/-1",
       "kb/99999999999999999999"]  # fmt: skip
TEXT = st.one_of(st.sampled_from(ODD), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
ID = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 2**31, 2**63, 2**64]))
JSON = st.recursive(
    st.none() | st.booleans() | ID | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                 "multipart/form-data; boundary=kb", "application/json; charset=utf-8"]  # fmt: skip
RAW = st.one_of(st.binary(max_size=300), st.sampled_from(
    [b"{", b"[" * 50_000, b"\x00" * 10, b'{"question": "\\u0000"}', b"\xff\xfe{}", b"null", b'"a string"', b"1e999"]
))  # fmt: skip


@pytest.fixture
def world(settings):
    settings.KB_LLM_URL = "http://127.0.0.1:9"  # nothing listens: an answer that gets that far fails fast, as a 200
    owner = make_user("owner", is_staff=True)
    viewer = make_user("viewer")
    collection = make_collection("ops", owner=owner, editor=[viewer])
    make_group("readers")
    conversation = Conversation.objects.create(user=owner, title="backups")
    conversation.collections.set([collection])
    message = Message.objects.create(conversation=conversation, question="When?", answer="At 02:00.",
                                     status=Message.Status.COMPLETE)  # fmt: skip
    document = add_document(collection, "backups.md", "# Backups\n\nThe backup runs nightly at 02:00.\n")
    return {"owner": owner, "collection": collection, "conversation": conversation, "message": message,
            "document": document, "token": api_token_create(user=owner, name="fuzz")[1]}  # fmt: skip


def _refused_not_failed(response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])


def _send(client, method: str, url: str, **kwargs):
    with transaction.atomic():
        response = getattr(client, method)(url, **kwargs)
        if hasattr(response, "streaming_content"):  # a stream that started: read it, it must not fail either
            b"".join(response.streaming_content)
        transaction.set_rollback(True)
    return response


# --- the JSON APIs --------------------------------------------------------------------------

ASK = st.fixed_dictionaries({}, optional={"question": st.one_of(TEXT, JSON), "collections": st.one_of(
    st.lists(ID, max_size=3), JSON), "conversation": st.one_of(ID, JSON), "stream": JSON})  # fmt: skip
CHAT = st.fixed_dictionaries({}, optional={
    "model": st.one_of(TEXT, JSON, st.sampled_from(["kb", "kb/1"])),
    "messages": st.one_of(JSON, st.lists(st.fixed_dictionaries({}, optional={
        "role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), JSON),
        "content": st.one_of(TEXT, JSON)}), max_size=3)),
    "stream": JSON, "max_tokens": JSON, "temperature": JSON, "top_p": JSON, "stream_options": JSON,
})  # fmt: skip
JSON_ENDPOINTS = {"api_ask": ASK, "openai_chat_completions": CHAT}


@FUZZ
@given(data=st.data())
def test_json_endpoints_refuse_malformed_bodies_without_failing(client, world, data):
    name = data.draw(st.sampled_from(sorted(JSON_ENDPOINTS)))
    url = reverse(name)
    headers = {"Authorization": f"Bearer {world['token']}"}
    choice = data.draw(st.sampled_from(["shaped", "any json", "raw"]))
    if choice == "raw":
        body, content_type = data.draw(RAW), data.draw(st.sampled_from(CONTENT_TYPES))
    else:
        payload = data.draw(JSON_ENDPOINTS[name] if choice == "shaped" else JSON)
        if choice == "shaped" and data.draw(st.booleans()):  # now and then a readable target, to get further in
            payload = {**payload, "collections": [world["collection"].pk], "model": "kb"}
        body, content_type = json.dumps(payload), data.draw(st.sampled_from(CONTENT_TYPES[:1] + CONTENT_TYPES))
    _refused_not_failed(_send(client, "post", url, data=body, content_type=content_type, headers=headers))


@FUZZ
@given(ident=st.one_of(ID.map(str), TEXT), method=st.sampled_from(["get", "post", "put", "delete", "patch"]))
def test_api_paths_with_odd_ids_and_methods_are_refused_without_failing(client, world, ident, method):
    headers = {"Authorization": f"Bearer {world['token']}"}
    digits = ident.lstrip("-") if ident.lstrip("-").isascii() and ident.lstrip("-").isdigit() else "1"
    for url in (f"/api/v1/documents/{digits}/", f"/api/v1/collections/{digits}/documents/", "/api/v1/collections/",
                "/api/v1/ask/", "/v1/models", f"/v1/models/{ident}", "/v1/chat/completions"):  # fmt: skip
        _refused_not_failed(_send(client, method, url, headers=headers))


@FUZZ
@given(names=st.lists(TEXT, min_size=0, max_size=3), raw=RAW, content_type=st.sampled_from(CONTENT_TYPES))
def test_uploads_with_odd_names_and_bodies_are_refused_without_failing(client, world, names, raw, content_type):
    headers = {"Authorization": f"Bearer {world['token']}"}
    client.force_login(world["owner"])
    boundary = "kb-fuzz"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{n[:300]}"\r\n\r\n{n[:50]}\r\n'
        for n in names
    )  # fmt: skip
    multipart = (parts + f"--{boundary}--\r\n").encode()
    pk = world["collection"].pk
    for url in (reverse("api_documents_upload", args=[pk]), reverse("document_upload", args=[pk])):
        multipart_type = f"multipart/form-data; boundary={boundary}"
        _refused_not_failed(_send(client, "post", url, data=multipart, content_type=multipart_type, headers=headers))
        _refused_not_failed(_send(client, "post", url, data=raw, content_type=content_type, headers=headers))


# --- the forms ------------------------------------------------------------------------------

# name: (the objects its URL takes, the fields its form reads; "*" fields are lists)
FORMS = {
    "ask": ([], ["question", "*collections"]),
    "collection_ask": (["collection"], ["question"]),
    "conversation_ask": (["conversation"], ["question"]),
    "conversation_rename": (["conversation"], ["title"]),
    "message_feedback": (["message"], ["rating", "comment"]),
    "collection_create": ([], ["name", "description"]),
    "collection_settings": (["collection"], ["name", "description", "open_to_all", "stale_after_days"]),
    "collection_delete": (["collection"], ["confirm_name"]),
    "grant_add": (["collection"], ["principal", "kind", "role"]),
    "api_tokens": ([], ["name"]),
    "source_create": (["collection"], ["kind", "location", "name", "branch", "include", "exclude", "every_minutes",
                                       "space", "namespaces", "prefix", "sitemap", "web_url", "attachments",
                                       "username", "token"]),
    "person_invite": ([], ["username", "first_name", "last_name", "email", "*groups"]),
    "person_groups": (["owner"], ["*groups"]),
}  # fmt: skip
# Pages that read the query string.
QUERIES = {
    "conversation_search": ([], ["q"]),
    "principal_suggest": ([], ["principal", "kind"]),
    "people": ([], ["q", "status"]),
    "collection_detail": (["collection"], ["q", "status", "folder", "page"]),
    "document_detail": (["document"], ["chunk", "q", "part"]),
    "audit_log": ([], ["collection"]),
}


def _fields(data, names: list[str]) -> dict:
    drawn = {}
    for field in names + data.draw(st.lists(TEXT, max_size=2)):  # and a stray field or two
        if data.draw(st.integers(0, 5)) == 0:
            continue  # now and then a field is missing
        values = st.one_of(TEXT, ID.map(str), st.sampled_from(["user", "group", "viewer", "owner", "web", "1"]))
        drawn[field.lstrip("*")] = data.draw(st.lists(values, max_size=3) if field.startswith("*") else values)
    return drawn


@MORE
@given(data=st.data())
def test_forms_refuse_odd_values_without_failing(client, world, data):
    name = data.draw(st.sampled_from(sorted(FORMS)))
    args, names = FORMS[name]
    client.force_login(world["owner"])
    url = reverse(name, args=[world[a].pk for a in args])
    htmx = {"HX-Request": "true"} if data.draw(st.booleans()) else {}
    _refused_not_failed(_send(client, "post", url, data=_fields(data, names), headers=htmx))


@MORE
@given(data=st.data())
def test_query_strings_with_odd_values_are_refused_without_failing(client, world, data):
    name = data.draw(st.sampled_from(sorted(QUERIES)))
    args, names = QUERIES[name]
    client.force_login(world["owner"])
    url = reverse(name, args=[world[a].pk for a in args])
    htmx = {"HX-Request": "true"} if data.draw(st.booleans()) else {}
    _refused_not_failed(_send(client, "get", url, data=_fields(data, names), headers=htmx))


# Hypothesis explores; these sweep every odd value through every field once, so a known bad
# value ("²", which isdigit() accepts and int() refuses; an id past 32 bits) is always tried.
def test_every_odd_value_in_every_field_is_refused_without_failing(client, world):
    client.force_login(world["owner"])
    for name in sorted(FORMS) + sorted(QUERIES):
        method, (args, names) = ("post", FORMS[name]) if name in FORMS else ("get", QUERIES[name])
        url = reverse(name, args=[world[a].pk for a in args])
        for value in [*ODD, str(2**31), str(2**63)]:
            fields = {n.lstrip("*"): [value] if n.startswith("*") else value for n in names}
            response = _send(client, method, url, data=fields)
            assert response.status_code < 500, (name, value[:40], response.status_code)
