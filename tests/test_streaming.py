"""The SSE answer stream, through Django's ASGI stack (AsyncClient), against real servers."""

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.urls import reverse

from kb.access import system_user
from kb.models import Message
from kb.services.collections import collection_revoke
from kb.services.conversations import message_ask
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user
from tests.helpers import free_port, read_stream

pytestmark = pytest.mark.django_db


@pytest.fixture
def unreachable_model_server(settings) -> str:
    """A KB_LLM_URL where nothing listens: the model server is down (or must not be called)."""
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"
    return settings.KB_LLM_URL


@pytest.fixture
def asked():
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = message_ask(user=user, question="When does the backup run?", collections=[collection])
    return user, message


def test_answer_streams_token_by_token_then_done(model_server, asked):
    user, message = asked
    events = read_stream(user, message)
    tokens = [data for event, data in events if event == "token"]
    assert len(tokens) > 3, "the answer should arrive in many pieces"
    assert events[-1][0] == "done"
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE
    assert message.answer.strip()
    assert f'id="message-{message.pk}"' in events[-1][1]


def test_model_server_down_gives_an_actionable_error(unreachable_model_server, asked):
    user, message = asked
    events = read_stream(user, message)
    assert [e for e, _ in events] == ["state", "done"]
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert "model server is offline" in message.error
    assert "model server is offline" in events[-1][1]


def test_no_readable_source_answers_without_calling_the_model(unreachable_model_server):
    user = make_user()
    empty = make_collection(viewer=[user])
    message, _ = message_ask(user=user, question="Anything?", collections=[empty])
    assert message.status == Message.Status.NO_ANSWER
    events = read_stream(user, message)
    assert [e for e, _ in events] == ["done"]
    assert "found nothing" in events[0][1]


def test_a_second_stream_of_the_same_message_does_not_generate_again(unreachable_model_server, asked):
    user, message = asked
    Message.objects.filter(pk=message.pk).update(status=Message.Status.COMPLETE, answer="Nightly [1].")
    events = read_stream(user, message)
    assert [e for e, _ in events] == ["done"]
    assert 'class="cite"' in events[0][1]


def test_sources_of_a_revoked_collection_are_not_sent_to_the_model(unreachable_model_server, asked):
    user, message = asked
    collection_id = message.sources[0]["collection_id"]
    collection_revoke(actor=system_user(), collection=message.conversation.collections.get(pk=collection_id), user=user)
    events = read_stream(user, message)
    message.refresh_from_db()
    assert message.status == Message.Status.NO_ANSWER
    assert "backups.md" not in events[-1][1]


def test_sources_name_title_and_headings_without_repeating_the_title():
    from kb.answering import breadcrumb

    assert breadcrumb({"title": "Backups", "heading": "Backups > Schedule"}) == "Backups > Schedule"
    assert breadcrumb({"title": "Ops guide", "heading": "Backups > Schedule"}) == "Ops guide > Backups > Schedule"
    assert breadcrumb({"title": "Notes", "heading": None}) == "Notes"


def test_download_streams_the_original_as_an_attachment_under_asgi():
    user = make_user()
    collection = make_collection(viewer=[user])
    document = add_document(collection, "backups.md", BACKUPS)

    async def fetch():
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(reverse("document_download", args=[document.pk]))
        assert response.is_async, "the body should be read block by block, not buffered whole"
        body = b"".join([part async for part in response.streaming_content])
        return response, body

    response, body = async_to_sync(fetch)()
    assert body.decode() == BACKUPS
    assert response["Content-Disposition"] == 'attachment; filename="backups.md"'
    assert response["Content-Length"] == str(len(BACKUPS.encode()))
    assert response["X-Content-Type-Options"] == "nosniff"
