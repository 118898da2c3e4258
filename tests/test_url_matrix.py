"""Every URL pattern × every kind of user, with the status each must get.

The table is checked against Django's URL resolver: a URL added without a row here fails
`test_every_url_pattern_has_a_declared_expectation`, so no route ships without its check.
What a user may not read is 404 (never 403), for pages, partials, streams and the API alike.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from kb.access import system_user
from kb.models import Conversation, Message, Role, Source, UploadBatch
from kb.services.collections import collection_delete, collection_grant
from kb.services.documents import document_delete
from kb.services.tokens import api_token_create
from tests.factories import add_document, make_collection, make_group, make_user

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "no_grant", "viewer", "editor", "owner", "group_viewer", "staff"]


def _row(anonymous, no_grant, viewer, editor, owner, group_viewer, staff) -> dict:
    return dict(zip(ROLES, [anonymous, no_grant, viewer, editor, owner, group_viewer, staff], strict=True))


PAGE = _row(302, 200, 200, 200, 200, 200, 200)  # any signed-in user
READ = _row(302, 404, 200, 200, 200, 200, 200)  # readers of the collection
READ_REDIRECT = _row(302, 404, 302, 302, 302, 302, 302)
EDIT = _row(302, 404, 404, 302, 302, 404, 302)  # editors and up
EDIT_GET = _row(302, 404, 404, 200, 200, 404, 200)
MANAGE_GET = _row(302, 404, 404, 404, 200, 404, 200)  # owners and staff
MANAGE = _row(302, 404, 404, 404, 302, 404, 302)
MINE_GET = _row(302, 404, 200, 404, 404, 404, 404)  # the viewer's own conversation, no one else's
MINE = _row(302, 404, 302, 404, 404, 404, 404)
STAFF_ONLY = _row(302, 404, 404, 404, 404, 404, 200)

# name: (method, args from the world, request body, expected status per role)
EXPECTED = {
    "home": ("get", [], None, PAGE),
    "login": ("get", [], None, _row(200, 200, 200, 200, 200, 200, 200)),
    "logout": ("post", [], {}, _row(302, 302, 302, 302, 302, 302, 302)),
    "collection_create": ("post", [], {"name": "brand new"}, STAFF_ONLY | {"staff": 302}),
    "collection_detail": ("get", ["collection"], None, READ),
    "document_upload": ("post", ["collection"], "file", EDIT),
    "collection_ask": ("post", ["collection"], {"question": "When does the backup run?"}, READ_REDIRECT),
    "document_detail": ("get", ["document"], None, READ),
    "document_download": ("get", ["document"], None, READ),
    "document_delete": ("post", ["document"], {}, EDIT),
    # Deletes can be undone during their grace period (issue 15): by editors for a document,
    # by owners and staff for a collection; typing the collection's name confirms its delete.
    "document_restore": ("post", ["deleted_document"], {}, EDIT),
    "collection_restore": ("post", ["deleted_collection"], {}, MANAGE),
    "batch_cancel": ("post", ["batch"], {}, EDIT),
    "source_create": ("get", ["collection"], None, EDIT_GET),
    "source_detail": ("get", ["source"], None, READ),
    "source_sync": ("post", ["source"], {}, EDIT),
    "source_remove": ("post", ["source"], {}, EDIT),
    "chunk_detail": ("get", ["chunk"], None, READ_REDIRECT),
    "conversation_detail": ("get", ["conversation"], None, MINE_GET),
    "conversation_ask": ("post", ["conversation"], {"question": "And the restore?"}, MINE),
    # Each reader searches, renames and deletes only their own conversations.
    "conversation_search": ("get", [], None, PAGE),
    "conversation_rename": ("post", ["conversation"], {"title": "Backup questions"}, MINE),
    "conversation_delete": ("post", ["conversation"], {}, MINE),
    # The stream is 404 even for anonymous users: an EventSource cannot follow a login redirect.
    "message_stream": ("get", ["message"], None, MINE_GET | {"anonymous": 404}),
    "message_stop": ("post", ["message"], {}, MINE),
    "message_regenerate": ("post", ["message"], {}, MINE),
    "message_feedback": ("post", ["message"], {"rating": "1", "comment": "clear"}, MINE),
    # Asking from the home page searches only what the asker may read, so anyone signed in may ask.
    "ask": ("post", [], {"question": "When does the backup run?"}, _row(302, 302, 302, 302, 302, 302, 302)),
    "collection_access": ("get", ["collection"], None, MANAGE_GET),
    "collection_settings": ("post", ["collection"], {"name": "renamed", "description": ""}, MANAGE),
    "collection_delete": ("post", ["collection"], {"confirm_name": "ops"}, MANAGE),
    "grant_add": ("post", ["collection"], {"principal": "no_grant", "kind": "user", "role": "viewer"}, MANAGE),
    "grant_remove": ("post", ["collection", "grant"], {}, MANAGE),
    "audit_log": ("get", [], None, STAFF_ONLY),
    "password_change": ("get", [], None, PAGE),
    "password_change_done": ("get", [], None, PAGE),
    "api_tokens": ("get", [], None, PAGE),
    "api_token_revoke": ("post", ["token"], {}, MINE),
    # People (issue 15): staff manage them; owners look people up by name and see their access
    # to the owner's collections; the set-password link's pages are for anyone holding a link.
    "people": ("get", [], None, STAFF_ONLY),
    "person_invite": ("post", [], {"username": "newcomer"}, STAFF_ONLY),
    "principal_suggest": ("get", [], None, MANAGE_GET),
    "person_detail": ("get", ["person"], None, MANAGE_GET),
    "person_password_reset": ("post", ["person"], {}, STAFF_ONLY),
    "person_deactivate": ("post", ["person"], {}, STAFF_ONLY | {"staff": 302}),
    "person_reactivate": ("post", ["person"], {}, STAFF_ONLY | {"staff": 302}),
    "person_groups": ("post", ["person"], {}, STAFF_ONLY | {"staff": 302}),
    "password_reset_confirm": ("get", ["reset_uid", "reset_token"], None, _row(200, 200, 200, 200, 200, 200, 200)),
    "password_reset_complete": ("get", [], None, _row(200, 200, 200, 200, 200, 200, 200)),
    # The model server banner's check (issue 15): anyone signed in; an htmx poll without a session gets 204.
    "model_status": ("get", [], None, PAGE),
    # The JSON API authenticates by bearer token only: no token is 401, not a login redirect.
    "api_collections": ("api-get", [], None, _row(401, 200, 200, 200, 200, 200, 200)),
    "api_documents_upload": ("api-post", ["collection"], "file", _row(401, 404, 404, 202, 202, 404, 202)),
    "api_document_detail": ("api-get", ["document"], None, _row(401, 404, 200, 200, 200, 200, 200)),
    "api_ask": ("api-json", [], "ask", _row(401, 404, 200, 200, 200, 200, 200)),
    # The OpenAI-compatible API (issue 16): the same tokens; a collection's model is 404 to whoever cannot read it.
    "openai_models": ("api-get", [], None, _row(401, 200, 200, 200, 200, 200, 200)),
    "openai_model": ("api-get", ["model"], None, _row(401, 404, 200, 200, 200, 200, 200)),
    "openai_chat_completions": ("api-json", [], "openai", _row(401, 404, 200, 200, 200, 200, 200)),
}
# Django's admin is one rule for all its pages: staff only, everyone else to its sign-in.
ADMIN = _row(302, 302, 302, 302, 302, 302, 200)


def _names(patterns, prefix: str = "") -> set[str]:
    names = set()
    for p in patterns:
        if isinstance(p, URLResolver):
            if p.namespace == "admin":
                names.add("admin:*")
            else:
                names |= _names(p.url_patterns, prefix + (f"{p.namespace}:" if p.namespace else ""))
        elif isinstance(p, URLPattern):
            names.add(prefix + p.name if p.name else f"<unnamed {p.pattern}>")
    return names


def test_every_url_pattern_has_a_declared_expectation():
    declared = set(EXPECTED) | {"admin:*"}
    routes = _names(get_resolver().url_patterns)
    assert routes - declared == set(), "URLs without a declared access expectation: add them to EXPECTED"
    assert declared - routes == set(), "expectations for URLs that no longer exist"


BACKUPS = "# Backups\n\nThe database backup runs nightly at 02:00.\n\n## Restore\n\nRun the restore script.\n"


@pytest.fixture
def world():
    users = {role: make_user(role) for role in ROLES[1:]}
    users["staff"].is_staff = True
    users["staff"].save()
    group = make_group("readers", users["group_viewer"])
    collection = make_collection("ops", owner=users["owner"], viewer=[users["viewer"]], editor=[users["editor"]])
    collection_grant(actor=system_user(), collection=collection, group=group, role=Role.VIEWER)
    document = add_document(collection, "backups.md", BACKUPS)
    conversation = Conversation.objects.create(user=users["viewer"], title="backups")
    conversation.collections.set([collection])
    message = Message.objects.create(
        conversation=conversation, question="When?", answer="At 02:00.", status=Message.Status.COMPLETE
    )
    token, _ = api_token_create(user=users["viewer"], name="matrix")
    raw_tokens = {role: api_token_create(user=u, name="t")[1] for role, u in users.items()}
    objects = {
        "collection": collection, "document": document, "chunk": document.chunks.first(),
        "conversation": conversation, "message": message, "token": token,
        "grant": collection.grants.get(user=users["viewer"]),
        "batch": UploadBatch.objects.create(collection=collection, created_by=users["editor"], label="2 files"),
        "source": Source.objects.create(collection=collection, name="wiki", kind="web", location="https://wiki.example/"),
        "person": users["viewer"],
        "reset_uid": SimpleNamespace(pk=urlsafe_base64_encode(force_bytes(users["viewer"].pk))),
        "reset_token": SimpleNamespace(pk="not-a-valid-token"),
        "model": SimpleNamespace(pk=f"kb/{collection.pk}"),
    }  # fmt: skip
    objects["deleted_document"] = add_document(collection, "old.md", "# Old\n\nNo longer wanted.\n")
    document_delete(user=system_user(), document=objects["deleted_document"])
    objects["deleted_collection"] = make_collection("old ops", owner=users["owner"], viewer=[users["viewer"]],
                                                    editor=[users["editor"]])  # fmt: skip
    collection_delete(actor=system_user(), collection=objects["deleted_collection"])
    return {"users": users, "objects": objects, "tokens": raw_tokens, "collection": collection}


def _request(client, method: str, url: str, body, world, role: str):
    headers = {}
    if method.startswith("api"):
        if role != "anonymous":
            headers["Authorization"] = f"Bearer {world['tokens'][role]}"
    elif role != "anonymous":
        client.force_login(world["users"][role])
    if body == "file":
        body = {"files": [SimpleUploadedFile("new.md", b"# New\n\nfresh text for the matrix\n")]}
    if method in ("get", "api-get"):
        return client.get(url, headers=headers)
    if method == "api-json" and body == "openai":
        payload = {"model": f"kb/{world['collection'].pk}", "stream": True,
                   "messages": [{"role": "user", "content": "When does the backup run?"}]}  # fmt: skip
        return client.post(url, payload, content_type="application/json", headers=headers)
    if method == "api-json":
        payload = {"question": "When does the backup run?", "collections": [world["collection"].pk], "stream": True}
        return client.post(url, payload, content_type="application/json", headers=headers)
    return client.post(url, body or {}, headers=headers)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_url_matrix(client, world, name):
    method, args, body, expected = EXPECTED[name]
    url = reverse(name, args=[world["objects"][a].pk for a in args])
    got = {}
    for role in ROLES:
        with transaction.atomic():  # each role starts from the same world
            client.logout()
            response = _request(client, method, url, body, world, role)
            got[role] = response.status_code
            if role == "anonymous" and response.status_code == 302:
                assert response["Location"].startswith(reverse("login")), (name, response["Location"])
            transaction.set_rollback(True)
    assert got == expected, f"{name}: got {got}"


def _admin_urls() -> list[str]:
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        if model._meta.app_label != "kb" or model.__name__ == "Conversation":
            continue  # Django's own user and group admins keep Django's per-model permissions
        urls.append(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    return urls


def test_admin_pages_are_for_staff_only(client, world):
    for url in _admin_urls():
        got = {}
        for role in ROLES:
            client.logout()
            if role != "anonymous":
                client.force_login(world["users"][role])
            got[role] = client.get(url).status_code
        assert got == ADMIN, f"{url}: got {got}"


def _unmasked(html: bytes) -> str:
    """The page less its CSRF token, which Django masks differently on every response."""
    return re.sub(r'("x-csrftoken": "|name="csrfmiddlewaretoken" value=")[^"]+', r"\1", html.decode())


def test_no_route_answers_403_for_hidden_objects(client, world):
    """A stranger probing ids that exist and ids that do not gets the same answer."""
    client.force_login(world["users"]["no_grant"])
    for name in ("collection_detail", "document_detail", "document_download", "collection_access", "source_detail",
                 "person_detail"):  # fmt: skip
        obj = world["objects"][name.split("_")[0]]
        real = client.get(reverse(name, args=[obj.pk]))
        missing = client.get(reverse(name, args=[obj.pk + 10_000]))
        assert real.status_code == missing.status_code == 404
        assert _unmasked(real.content) == _unmasked(missing.content)
