"""The JSON API: personal tokens (hashed, shown once, revocable) acting with their owner's rights."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient, Client
from django.urls import reverse

from kb.models import ApiToken, AuditEvent, Document, Message
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    viewer, editor = make_user("viewer"), make_user("editor")
    ops = make_collection("ops", viewer=[viewer], editor=[editor])
    secret = make_collection("secret")
    add_document(ops, "backups.md", BACKUPS)
    add_document(secret, "salaries.md", "# Salaries\n\nThe backup administrator earns 90,000 a year.\n")
    return {"viewer": viewer, "editor": editor, "ops": ops, "secret": secret}


def bearer(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


def test_token_is_shown_once_and_stored_only_as_a_digest(client, setup):
    client.force_login(setup["viewer"])
    created = client.post(reverse("api_tokens"), {"name": "laptop"}).content.decode()
    token = ApiToken.objects.get(user=setup["viewer"])
    raw = created.split('<code id="new-token">', 1)[1].split("</code>", 1)[0]
    assert raw.startswith("kb_") and len(raw) > 40
    assert token.digest == ApiToken.digest_of(raw) and raw not in token.digest
    assert raw not in json.dumps(list(ApiToken.objects.values()), default=str)
    listing = client.get(reverse("api_tokens")).content.decode()
    assert raw not in listing and token.prefix in listing
    assert client.get(reverse("api_collections"), headers=bearer(raw)).status_code == 200


def test_revoked_token_is_refused_on_the_next_request(client, setup):
    token, raw = api_token_create(user=setup["viewer"], name="ci")
    api = Client()
    assert api.get(reverse("api_collections"), headers=bearer(raw)).status_code == 200
    client.force_login(setup["viewer"])
    assert client.post(reverse("api_token_revoke", args=[token.pk])).status_code == 302
    response = api.get(reverse("api_collections"), headers=bearer(raw))
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.filter(action="token.revoke", actor=setup["viewer"]).exists()


def test_another_users_token_cannot_be_revoked(client, setup):
    token, _ = api_token_create(user=setup["viewer"], name="ci")
    client.force_login(setup["editor"])
    assert client.post(reverse("api_token_revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.is_active


def test_inactive_owner_makes_the_token_useless(setup):
    _, raw = api_token_create(user=setup["viewer"], name="ci")
    setup["viewer"].is_active = False
    setup["viewer"].save()
    assert Client().get(reverse("api_collections"), headers=bearer(raw)).status_code == 401


def test_the_api_ignores_the_session_cookie(client, setup):
    client.force_login(setup["viewer"])
    assert client.get(reverse("api_collections")).status_code == 401


def test_token_requests_need_no_csrf_token_but_session_posts_do(setup):
    _, raw = api_token_create(user=setup["editor"], name="ci")
    strict = Client(enforce_csrf_checks=True)
    files = {"files": [SimpleUploadedFile("new.md", b"# New\n\nSomething new.\n")]}
    url = reverse("api_documents_upload", args=[setup["ops"].pk])
    assert strict.post(url, files, headers=bearer(raw)).status_code == 202
    strict.force_login(setup["editor"])
    page_upload = reverse("document_upload", args=[setup["ops"].pk])
    files = {"files": [SimpleUploadedFile("other.md", b"# Other\n\nText.\n")]}
    assert strict.post(page_upload, files).status_code == 403
    assert strict.post(reverse("collection_ask", args=[setup["ops"].pk]), {"question": "q?"}).status_code == 403


def test_collections_lists_exactly_what_the_owner_reads(setup):
    _, raw = api_token_create(user=setup["viewer"], name="ci")
    data = Client().get(reverse("api_collections"), headers=bearer(raw)).json()
    assert [(c["name"], c["role"]) for c in data["collections"]] == [("ops", "viewer")]


def test_upload_needs_the_editor_role(setup):
    url = reverse("api_documents_upload", args=[setup["ops"].pk])
    _, viewer_raw = api_token_create(user=setup["viewer"], name="v")
    _, editor_raw = api_token_create(user=setup["editor"], name="e")
    file = SimpleUploadedFile("runbook.md", b"# Runbook\n\nRestart the service.\n")
    assert Client().post(url, {"files": [file]}, headers=bearer(viewer_raw)).status_code == 404
    file.seek(0)
    response = Client().post(url, {"files": [file]}, headers=bearer(editor_raw))
    assert response.status_code == 202
    (doc,) = response.json()["documents"]
    assert doc["outcome"] == "created" and doc["status"] == "queued"
    assert Document.objects.get(pk=doc["id"]).uploaded_by == setup["editor"]
    detail = Client().get(reverse("api_document_detail", args=[doc["id"]]), headers=bearer(editor_raw))
    assert detail.json()["source_path"] == "runbook.md"


def test_ask_naming_an_unreadable_collection_is_404_and_records_nothing(setup):
    _, raw = api_token_create(user=setup["viewer"], name="v")
    body = {"question": "What does the backup administrator earn?", "collections": [setup["secret"].pk]}
    response = Client().post(reverse("api_ask"), body, content_type="application/json", headers=bearer(raw))
    assert response.status_code == 404
    assert not Message.objects.exists()


def test_ask_returns_the_answer_of_the_real_model_with_readable_sources(setup, model_server):
    _, raw = api_token_create(user=setup["viewer"], name="v")
    body = {"question": "When does the database backup run?", "collections": [setup["ops"].pk]}
    response = Client().post(reverse("api_ask"), body, content_type="application/json", headers=bearer(raw))
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["status"] == "complete" and data["answer"].strip()
    assert data["sources"] and {s["collection_id"] for s in data["sources"]} == {setup["ops"].pk}
    message = Message.objects.get(pk=data["message"])
    assert message.answer == data["answer"] and message.conversation.user == setup["viewer"]


def test_ask_streams_tokens_then_the_whole_message(setup, model_server):
    _, raw = api_token_create(user=setup["viewer"], name="v")
    body = {"question": "How do I restore?", "collections": [setup["ops"].pk], "stream": True}

    async def run() -> str:
        response = await AsyncClient().post(
            reverse("api_ask"), body, content_type="application/json", headers=bearer(raw)
        )
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        return b"".join([part async for part in response.streaming_content]).decode()

    text = async_to_sync(run)()
    events = [block for block in text.split("\n\n") if block.strip()]
    kinds = [block.split("\n", 1)[0] for block in events]
    assert kinds[-1] == "event: done" and kinds.count("event: token") >= 2
    done = json.loads(events[-1].split("data: ", 1)[1])
    pieces = [json.loads(b.split("data: ", 1)[1]) for b in events if b.startswith("event: token")]
    assert done["answer"] == "".join(pieces) and done["status"] == "complete"
