"""The MCP server at /mcp, through the official `mcp` SDK's client against uvicorn and the real model server.

The demo model (SmolLM2-135M) ignores instructions and may write nothing: these tests check
kb's part (what a token's owner may list, search and ask, what is shown, its citations,
abstention, refusals), not the model's prose.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from urllib.parse import urlparse

import httpx
import httpx2
import pytest
from django.urls import resolve
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from kb import selectors
from kb.access import system_user
from kb.api import answers
from kb.models import Chunk, Message
from kb.services.conversations import DISCONNECTED, NO_SOURCE_ANSWER
from kb.services.documents import document_delete
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user
from tests.helpers import in_own_thread, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "When does the database backup run?"
SALARIES = "# Salaries\n\nThe backup administrator earns 90,000 a year.\n"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "1"}}}  # fmt: skip


@pytest.fixture
def world():
    alice, bob = make_user("alice"), make_user("bob")
    ops = make_collection("ops", viewer=[alice])
    hr = make_collection("hr", viewer=[bob])
    secret = make_collection("secret")
    add_document(ops, "backups.md", BACKUPS)
    add_document(hr, "vacation.md", VACATION)
    add_document(secret, "salaries.md", SALARIES)
    return {"alice": alice, "bob": bob, "ops": ops, "hr": hr, "secret": secret,
            "alice_token": api_token_create(user=alice, name="mcp")[1],
            "bob_token": api_token_create(user=bob, name="mcp")[1]}  # fmt: skip


def _http(token: str | None, statuses: list[int] | None = None) -> httpx2.AsyncClient:
    """The HTTP client under the SDK's transport, with the token; `statuses` collects what kb answered."""

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {"response": [record]} if statuses is not None else {}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300), event_hooks=hooks)


def session(web_server: str, token: str | None, work, statuses: list[int] | None = None, path: str = "/mcp"):
    """Run `work(session)` in an initialized ClientSession (the classic handshake) over Streamable HTTP."""

    async def main():
        async with (
            _http(token, statuses) as http,
            streamable_http_client(f"{web_server}{path}", http_client=http) as streams,
        ):
            async with ClientSession(*streams) as mcp:
                info = await mcp.initialize()
                return info if work is None else await work(mcp)

    return in_own_thread(asyncio.run, main())


def call(web_server: str, token: str, tool: str, arguments: dict | None = None):
    return session(web_server, token, lambda mcp: mcp.call_tool(tool, arguments or {}))


def _chunk_of(url: str, web_server: str) -> Chunk:
    """The passage a url names: an absolute address of kb's own passage page."""
    assert url.startswith(f"{web_server}/passages/"), url
    match = resolve(urlparse(url).path)
    assert match.url_name == "chunk_detail"
    return Chunk.objects.get(pk=match.kwargs["pk"])


def _error(result) -> str:
    assert result.is_error, result
    return " ".join(c.text for c in result.content)


def test_the_three_tools_are_listed_with_what_a_model_needs_to_call_them(web_server, world):
    listed = session(web_server, world["alice_token"], lambda mcp: mcp.list_tools())
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == {"list_collections", "search", "ask"}
    assert all(t.description and t.output_schema for t in tools.values())
    assert tools["search"].input_schema["required"] == ["query"]
    assert tools["search"].input_schema["properties"]["limit"]["anyOf"][0]["maximum"] == 20
    assert tools["ask"].input_schema["required"] == ["question"]
    assert tools["search"].annotations.read_only_hint and not tools["ask"].annotations.read_only_hint


def test_list_collections_is_exactly_what_the_token_owner_reads(web_server, world):
    for user, collection in (("alice", "ops"), ("bob", "hr")):
        result = call(web_server, world[f"{user}_token"], "list_collections")
        assert not result.is_error
        assert result.structured_content["collections"] == [
            {"id": world[collection].pk, "name": collection, "description": "", "role": "viewer", "documents": 1}
        ]


def test_list_collections_counts_only_the_documents_search_can_use(web_server, world):
    ops = world["ops"]
    add_document(ops, "restore.md", "# Restore\n\nStop the application, then run the restore script.\n")
    add_document(ops, "queued.md", "# Queued\n\nNot processed yet.\n", process=False)
    document_delete(user=system_user(), document=add_document(ops, "gone.md", "# Gone\n\nDeleted.\n"))
    empty = make_collection("empty", viewer=[world["alice"]])
    result = call(web_server, world["alice_token"], "list_collections")
    counted = {c["name"]: c["documents"] for c in result.structured_content["collections"]}
    assert counted == {"empty": 0, "ops": 2}, "queued and deleted documents are not there to find"
    assert empty.pk in {c["id"] for c in result.structured_content["collections"]}


def test_search_finds_passages_only_in_collections_the_owner_reads(web_server, world):
    # "backup administrator" is in the secret collection's salaries too; "vacation" only in bob's hr.
    result = call(web_server, world["alice_token"], "search", {"query": "backup administrator vacation", "limit": 20})
    found = result.structured_content
    assert found["passages"]
    for n, passage in enumerate(found["passages"], start=1):
        chunk = _chunk_of(passage["url"], web_server)
        assert passage["n"] == n and chunk.collection_id == passage["collection_id"] == world["ops"].pk
        assert passage["collection"] == "ops" and passage["source"] == "backups.md"
        assert passage["text"] and passage["text"] in BACKUPS
    assert "90,000" not in str(found) and "vacation days" not in str(found).lower()


def test_search_is_kbs_hybrid_search_with_its_judgement(web_server, world):
    found = call(web_server, world["alice_token"], "search", {"query": QUESTION}).structured_content
    assert found["answers_query"] is True and found["missing_words"] == []
    best = found["passages"][0]
    assert "02:00" in best["text"] and best["heading"] == "Backups > Schedule" and best["title"] == "Backups"
    nothing = call(web_server, world["alice_token"], "search", {"query": "zebra migration"}).structured_content
    assert nothing["answers_query"] is False and "zebra" in nothing["missing_words"]


def test_naming_a_collection_the_owner_cannot_read_is_refused_as_a_missing_one(web_server, world):
    missing = 999_999
    refusals = {}
    for name, pk in (("forbidden", world["ops"].pk), ("missing", missing)):
        search = call(web_server, world["bob_token"], "search", {"query": QUESTION, "collections": [pk]})
        ask = call(web_server, world["bob_token"], "ask", {"question": QUESTION, "collections": [pk]})
        refusals[name] = [_error(r).replace(str(pk), "<id>") for r in (search, ask)]
        assert all("ops" not in text and "backup" not in text.lower() for text in refusals[name])
    assert refusals["forbidden"] == refusals["missing"]
    assert "<id>" in refusals["missing"][0]
    assert not Message.objects.filter(conversation__user=world["bob"]).exists()


def test_ask_is_kbs_checked_answer_with_citations_into_kb(web_server, world):
    result = call(web_server, world["alice_token"], "ask", {"question": QUESTION, "collections": [world["ops"].pk]})
    answer = result.structured_content
    assert not result.is_error and answer["status"] in ("complete", "incomplete", "failed")
    citations = answer["citations"]
    assert citations and [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    assert {_chunk_of(c["url"], web_server).collection_id for c in citations} == {world["ops"].pk}
    assert citations[0]["source"] == "backups.md" and citations[0]["title"].startswith("Backups")
    # kb's own part, whatever the model wrote: the sentence quoted from the passage, with its [n].
    text = answer["answer"]
    assert text.startswith(answers.QUOTED_LABEL) and "02:00" in text
    assert {int(n) for n in re.findall(r"\[(\d+)\]", text)} <= {c["n"] for c in citations}
    assert all(set(s["citations"]) <= {c["n"] for c in citations} for s in answer["sentences"])
    conversation = resolve(urlparse(answer["conversation_url"]).path)
    assert conversation.url_name == "conversation_detail"
    message = Message.objects.get(conversation=conversation.kwargs["pk"])
    assert message.conversation.user == world["alice"] and message.question == QUESTION
    assert text == answers.shown_text(message, selectors.message_sources(user=world["alice"], message=message))
    assert [s["supported"] for s in answer["sentences"]] == [s["supported"] for s in message.sentences]


def test_ask_says_plainly_when_nothing_readable_answers(web_server, world):
    answer = call(web_server, world["alice_token"], "ask", {"question": "zebra migration across the savanna"})
    assert answer.structured_content["status"] == "no_answer"
    assert (
        answer.structured_content["answer"].startswith(NO_SOURCE_ANSWER)
        and "zebra" in answer.structured_content["answer"]
    )
    assert answer.structured_content["citations"] == [] and answer.structured_content["sentences"] == []


def test_asking_everything_never_reaches_another_users_passages(web_server, world):
    result = call(web_server, world["bob_token"], "ask", {"question": "What does the backup administrator earn?"})
    answer = result.structured_content
    assert {_chunk_of(c["url"], web_server).collection_id for c in answer["citations"]} <= {world["hr"].pk}
    assert "90,000" not in answer["answer"] and "02:00" not in answer["answer"]


def test_a_missing_or_bad_token_is_401_before_mcp(web_server, world):
    for headers in ({}, {"Authorization": "Bearer kb_not-a-real-token"}, {"Authorization": "Basic YTpi"}):
        response = httpx.post(f"{web_server}/mcp", json=INITIALIZE, headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    statuses: list[int] = []
    with pytest.raises(ExceptionGroup):  # the SDK's client fails to initialize
        session(web_server, "kb_not-a-real-token", lambda mcp: mcp.list_tools(), statuses)
    assert statuses == [401]


def test_a_deactivated_users_token_is_refused(web_server, world):
    headers = {"Authorization": f"Bearer {world['alice_token']}", "Accept": "application/json, text/event-stream"}
    assert httpx.post(f"{web_server}/mcp", json=INITIALIZE, headers=headers).status_code == 200
    world["alice"].is_active = False
    world["alice"].save()
    assert httpx.post(f"{web_server}/mcp", json=INITIALIZE, headers=headers).status_code == 401


def test_the_trailing_slash_reaches_the_same_endpoint(web_server, world):
    statuses: list[int] = []
    info = session(web_server, world["alice_token"], None, statuses, path="/mcp/")
    assert info.server_info.name == "kb" and statuses[0] == 200 and set(statuses) <= {200, 202}  # never redirected


def test_a_client_of_the_stateless_protocol_is_scoped_alike(web_server, world):
    async def main():
        async with _http(world["alice_token"]) as http:
            async with Client(streamable_http_client(f"{web_server}/mcp", http_client=http)) as client:
                listed = await client.call_tool("list_collections", {})
                refused = await client.call_tool("search", {"query": QUESTION, "collections": [world["hr"].pk]})
                return client.protocol_version, listed, refused

    version, listed, refused = in_own_thread(asyncio.run, main())
    assert version == "2026-07-28"
    assert [c["name"] for c in listed.structured_content["collections"]] == ["ops"]
    assert refused.is_error and "hr" not in _error(refused)


def test_a_caller_who_leaves_mid_answer_leaves_the_answer_stored_as_it_ended(web_server, world):
    # The SDK cancels the call when its client goes away; kb must still store what arrived,
    # as for a reader who closes the page, never leave the message "streaming".
    loop = asyncio.new_event_loop()

    async def ask():
        async with _http(world["alice_token"]) as http:
            async with Client(streamable_http_client(f"{web_server}/mcp", http_client=http)) as client:
                await client.call_tool("ask", {"question": "Explain every step of backups and restores in detail."})

    call = loop.create_task(ask())
    caller = threading.Thread(target=loop.run_until_complete, args=(asyncio.wait({call}),))
    caller.start()
    messages = Message.objects.filter(conversation__user=world["alice"])
    deadline = time.monotonic() + 120
    while not messages.exclude(status=Message.Status.PENDING).exists():
        assert time.monotonic() < deadline and caller.is_alive(), "the answer never started"
        time.sleep(0.05)
    loop.call_soon_threadsafe(call.cancel)
    caller.join(30)
    loop.close()
    finished = (Message.Status.COMPLETE, Message.Status.INCOMPLETE, Message.Status.FAILED)
    message = wait_for_status(messages.get(), *finished, timeout=30)
    if message.status == Message.Status.INCOMPLETE:  # the model had not finished when the caller left
        assert message.error == DISCONNECTED
