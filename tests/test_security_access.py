"""Access administration, open collections, audit, conversations, revocation, sign-in throttling, SSO groups."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.test import Client
from django.urls import reverse

from kb import access, selectors
from kb.access import system_user
from kb.models import AuditEvent, Collection, Conversation, Message, Role
from kb.services.collections import collection_delete, collection_grant, collection_revoke, collection_update
from kb.services.conversations import message_ask
from tests.corpus import BACKUPS
from tests.factories import PASSWORD, add_document, make_collection, make_group, make_user
from tests.helpers import read_stream

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops():
    owner, viewer, stranger = make_user("owner"), make_user("viewer"), make_user("stranger")
    collection = make_collection("ops", owner=owner, viewer=[viewer])
    document = add_document(collection, "backups.md", BACKUPS)
    return {"owner": owner, "viewer": viewer, "stranger": stranger, "collection": collection, "document": document}


# Administration pages ----------------------------------------------------------------------


def test_owner_adds_a_user_and_a_group_and_sees_why_each_has_access(client, ops):
    team = make_group("sre", member := make_user("member"))
    client.force_login(ops["owner"])
    url = reverse("grant_add", args=[ops["collection"].pk])
    client.post(url, {"principal": "stranger", "kind": "user", "role": "editor"})
    response = client.post(url, {"principal": "sre", "kind": "group", "role": "viewer"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<section id="access"')
    assert access.role_for(ops["stranger"], ops["collection"]) == Role.EDITOR
    assert access.role_for(member, ops["collection"]) == Role.VIEWER
    assert "via group sre: viewer" in html and "direct grant: editor" in html
    actions = list(AuditEvent.objects.filter(collection=ops["collection"], action="access.grant")
                   .values_list("target", "actor__username"))  # fmt: skip
    assert ("user stranger", "owner") in actions and ("group sre", "owner") in actions
    del team


def test_grant_to_an_unknown_user_is_refused_and_named(client, ops):
    client.force_login(ops["owner"])
    response = client.post(reverse("grant_add", args=[ops["collection"].pk]),
                           {"principal": "nobody", "kind": "user", "role": "viewer"})  # fmt: skip
    assert response.status_code == 400 and "No active user named" in response.content.decode()


def test_owner_removes_a_grant_and_the_audit_log_records_it(client, ops):
    grant = ops["collection"].grants.get(user=ops["viewer"])
    client.force_login(ops["owner"])
    client.post(reverse("grant_remove", args=[ops["collection"].pk, grant.pk]))
    assert not access.can_read(ops["viewer"], ops["collection"])
    event = AuditEvent.objects.get(action="access.revoke")
    assert (event.actor, event.target, event.collection_name) == (ops["owner"], "user viewer", "ops")


def test_grant_of_another_collection_cannot_be_removed_through_this_one(client, ops):
    other = make_collection("other", owner=ops["owner"], viewer=[ops["stranger"]])
    foreign = other.grants.get(user=ops["stranger"])
    client.force_login(ops["owner"])
    assert client.post(reverse("grant_remove", args=[ops["collection"].pk, foreign.pk])).status_code == 404
    assert access.can_read(ops["stranger"], other)


def test_owner_renames_and_deletes_a_collection(client, ops):
    client.force_login(ops["owner"])
    pk = ops["collection"].pk
    client.post(reverse("collection_settings", args=[pk]), {"name": "operations", "description": "runbooks"})
    assert Collection.objects.get(pk=pk).name == "operations"
    assert client.post(reverse("collection_delete", args=[pk]), {"confirm_name": "operations"}).status_code == 302
    assert Collection.objects.get(pk=pk).deleted_at is not None  # restorable until purged
    assert list(AuditEvent.objects.filter(collection_name__in=["ops", "operations"]).values_list("action", flat=True)
                .order_by("pk"))[-2:] == ["collection.update", "collection.delete"]  # fmt: skip


def test_services_refuse_an_actor_who_cannot_manage(ops):
    with pytest.raises(PermissionError):
        collection_grant(actor=ops["viewer"], collection=ops["collection"], user=ops["stranger"],
                                  role=Role.OWNER)  # fmt: skip
    with pytest.raises(PermissionError):
        collection_delete(actor=ops["viewer"], collection=ops["collection"])


def test_uploads_and_deletions_are_audited(client, ops):
    editor = make_user("ed")
    collection_grant(actor=system_user(), collection=ops["collection"], user=editor, role=Role.EDITOR)
    document = add_document(ops["collection"], "new.md", "# New\n\nText.\n", user=editor)
    client.force_login(editor)
    client.post(reverse("document_delete", args=[document.pk]))
    rows = list(AuditEvent.objects.filter(actor=editor).order_by("pk").values_list("action", "target"))
    assert rows == [("document.upload", "new.md"), ("document.delete", "new.md")]


def test_audit_log_page_is_for_staff(client, ops):
    client.force_login(ops["owner"])
    assert client.get(reverse("audit_log")).status_code == 404
    client.force_login(make_user(is_staff=True))
    html = client.get(reverse("audit_log")).content.decode()
    assert "collection.create" in html and "document.upload" in html


def test_saving_a_collection_unchanged_records_no_audit_event(ops):
    collection = ops["collection"]
    before = AuditEvent.objects.count()
    collection_update(actor=ops["owner"], collection=collection, name=collection.name,
                               description="", open_to_all=collection.open_to_all)  # fmt: skip
    assert AuditEvent.objects.count() == before


# Open collections --------------------------------------------------------------------------


def test_open_collection_is_read_by_every_signed_in_user_but_edited_only_by_grants(client, ops):
    collection_update(actor=ops["owner"], collection=ops["collection"], name="ops", open_to_all=True)
    assert access.role_for(ops["stranger"], ops["collection"]) == Role.VIEWER
    assert not access.can_edit(ops["stranger"], ops["collection"])
    assert access.role_for(AnonymousUser(), ops["collection"]) is None
    client.force_login(ops["stranger"])
    assert client.get(reverse("document_detail", args=[ops["document"].pk])).status_code == 200
    message, _ = message_ask(user=ops["stranger"], question="backup?", collections=[ops["collection"]])
    assert message.sources
    collection_update(actor=ops["owner"], collection=ops["collection"], name="ops", open_to_all=False)
    assert client.get(reverse("document_detail", args=[ops["document"].pk])).status_code == 404


# Conversations and revocation --------------------------------------------------------------


def test_conversations_of_one_user_are_invisible_to_another(client, ops):
    message, _ = message_ask(user=ops["viewer"], question="backup?", collections=[ops["collection"]])
    conversation = message.conversation
    other = make_user("colleague")
    collection_grant(actor=system_user(), collection=ops["collection"], user=other, role=Role.OWNER)
    assert list(selectors.conversation_list(user=other)) == []
    client.force_login(other)
    for url in (conversation.get_absolute_url(), reverse("message_stream", args=[message.pk])):
        assert client.get(url).status_code == 404
    assert client.post(reverse("conversation_ask", args=[conversation.pk]), {"question": "x?"}).status_code == 404
    assert conversation.messages.count() == 1
    assert "backup?" not in client.get(reverse("home")).content.decode()


def test_revoking_a_grant_takes_effect_in_an_open_conversation(client, ops):
    client.force_login(ops["viewer"])
    client.post(reverse("collection_ask", args=[ops["collection"].pk]), {"question": "When does the backup run?"})
    conversation = Conversation.objects.get(user=ops["viewer"])
    first = conversation.messages.get()
    cited = reverse("chunk_detail", args=[first.sources[0]["chunk_id"]])
    assert cited in client.get(conversation.get_absolute_url()).content.decode()

    collection_revoke(collection=ops["collection"], user=ops["viewer"], actor=ops["owner"])

    page = client.get(conversation.get_absolute_url()).content.decode()
    assert cited not in page and "02:00" not in page
    # The pending answer's stream no longer gives the model what the user cannot read.
    events = read_stream(ops["viewer"], first)
    assert events[-1][0] == "done" and "None of the passages" in events[-1][1] and "02:00" not in events[-1][1]
    # A follow-up in the same conversation retrieves nothing from the revoked collection.
    client.post(reverse("conversation_ask", args=[conversation.pk]), {"question": "And the backup?"})
    follow_up = conversation.messages.order_by("pk").last()
    assert follow_up.sources == [] and follow_up.status == Message.Status.NO_ANSWER
    assert client.get(reverse("document_detail", args=[ops["document"].pk])).status_code == 404


def test_removing_a_user_from_a_granted_group_takes_effect_at_once(ops):
    group = make_group("readers", member := make_user("m"))
    collection_grant(actor=system_user(), collection=ops["collection"], group=group, role=Role.VIEWER)
    assert access.can_read(member, ops["collection"])
    member.groups.remove(group)
    assert not access.can_read(member, ops["collection"])
    assert list(selectors.chunks_readable_by(user=member)) == []


# Sign-in, password, throttling -------------------------------------------------------------


def test_sign_in_is_throttled_after_repeated_failures(ops, settings):
    settings.AXES_FAILURE_LIMIT = 3
    browser = Client()
    for _ in range(3):
        response = browser.post(reverse("login"), {"username": "viewer", "password": "wrong"})
    response = browser.post(reverse("login"), {"username": "viewer", "password": PASSWORD})
    assert response.status_code == 429
    assert "_auth_user_id" not in browser.session
    # Another user from the same address is not locked out by it.
    ok = browser.post(reverse("login"), {"username": "owner", "password": PASSWORD})
    assert ok.status_code == 302 and browser.session["_auth_user_id"] == str(ops["owner"].pk)


def test_password_change(client, ops):
    client.force_login(ops["viewer"])
    assert client.get(reverse("password_change")).status_code == 200
    response = client.post(reverse("password_change"), {
        "old_password": PASSWORD, "new_password1": "a-new-long-password-9", "new_password2": "a-new-long-password-9",
    })  # fmt: skip
    assert response.status_code == 302 and response["Location"] == reverse("password_change_done")
    ops["viewer"].refresh_from_db()
    assert ops["viewer"].check_password("a-new-long-password-9")


# Single sign-on groups ---------------------------------------------------------------------


def test_oidc_claims_keep_mapped_groups_in_step_and_leave_others_alone(settings):
    from kb.oidc import sync_groups

    settings.KB_OIDC_GROUP_MAP = {"idp-hr": "HR", "idp-eng": "Engineering"}
    user = make_user("sso")
    manual = make_group("hand-made", user)
    sync_groups(user, {"groups": ["idp-hr", "idp-eng", "unmapped"]})
    assert set(user.groups.values_list("name", flat=True)) == {"HR", "Engineering", "hand-made"}
    sync_groups(user, {"groups": ["idp-eng"]})
    assert set(user.groups.values_list("name", flat=True)) == {"Engineering", "hand-made"}
    assert not Group.objects.filter(name="unmapped").exists()
    del manual
