"""The Django admin changes collections and access through the services: audited like the pages."""

from __future__ import annotations

import os

import pytest
from django.urls import reverse

from kb.models import AuditEvent, Collection, CollectionGrant, Role
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = make_user("staffer", is_staff=True)
    client.force_login(user)
    return user


def _audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_a_grant_added_in_the_admin_is_audited_with_its_actor(client, staff):
    collection = make_collection("Handbook")
    reader = make_user("reader")
    response = client.post(
        reverse("admin:kb_collectiongrant_add"),
        {"collection": collection.pk, "user": reader.pk, "group": "", "role": Role.EDITOR},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert CollectionGrant.objects.get(collection=collection, user=reader).role == Role.EDITOR
    [event] = [e for e in _audit("access.grant") if e.target == "user reader"]
    assert (event.actor, event.collection, event.detail["role"]) == (staff, collection, Role.EDITOR)


def test_a_grant_moved_to_another_user_in_the_admin_revokes_the_first(client, staff):
    first, second = make_user("first"), make_user("second")
    collection = make_collection("Handbook", viewer=[first])
    grant = CollectionGrant.objects.get(collection=collection, user=first)
    response = client.post(
        reverse("admin:kb_collectiongrant_change", args=[grant.pk]),
        {"collection": collection.pk, "user": second.pk, "group": "", "role": Role.VIEWER},
    )
    assert response.status_code == 302
    assert not CollectionGrant.objects.filter(collection=collection, user=first).exists()
    assert CollectionGrant.objects.filter(collection=collection, user=second).exists()
    assert [e.target for e in _audit("access.revoke")] == ["user first"]


def test_a_grant_deleted_in_the_admin_is_revoked_and_audited(client, staff):
    reader = make_user("reader")
    collection = make_collection("Handbook", viewer=[reader])
    grant = CollectionGrant.objects.get(collection=collection, user=reader)
    response = client.post(reverse("admin:kb_collectiongrant_delete", args=[grant.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not CollectionGrant.objects.filter(pk=grant.pk).exists()
    assert [(e.actor, e.target) for e in _audit("access.revoke")] == [(staff, "user reader")]


def test_a_collection_deleted_in_the_admin_goes_with_its_stored_files(
    client, staff, django_capture_on_commit_callbacks
):
    collection = make_collection("Old wiki")
    document = add_document(collection, "page.md", "# Page\n\nText.", process=False)
    stored = document.file.path
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:kb_collection_delete", args=[collection.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Collection.objects.filter(pk=collection.pk).exists()
    assert [(e.actor, e.target) for e in _audit("collection.delete")] == [(staff, "Old wiki")]
    assert not os.path.exists(stored)


def test_people_who_are_not_staff_cannot_use_the_admin(client):
    client.force_login(make_user("someone"))
    response = client.get(reverse("admin:kb_collectiongrant_changelist"))
    assert response.status_code == 302 and "login" in response["Location"]


def test_a_collection_name_taken_in_another_case_is_a_form_error_in_the_admin(client, staff):
    make_collection("Handbook")
    response = client.post(reverse("admin:kb_collection_add"), {
        "name": "handbook", "description": "", "grants-TOTAL_FORMS": "0", "grants-INITIAL_FORMS": "0",
    })  # fmt: skip
    assert response.status_code == 200
    assert "A collection named &#x27;handbook&#x27; already exists." in response.content.decode()
    assert Collection.objects.filter(name__iexact="handbook").count() == 1


def test_a_collection_added_in_the_admin_is_owned_by_its_creator_and_audited(client, staff):
    response = client.post(reverse("admin:kb_collection_add"), {
        "name": "Runbooks", "description": "", "grants-TOTAL_FORMS": "0", "grants-INITIAL_FORMS": "0",
    })  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    collection = Collection.objects.get(name="Runbooks")
    assert CollectionGrant.objects.get(collection=collection).user == staff
    assert [(e.actor, e.target) for e in _audit("collection.create")] == [(staff, "Runbooks")]
