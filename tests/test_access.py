import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from kb import access, selectors
from kb.access import system_user
from kb.models import Role
from kb.services.collections import collection_grant, collection_revoke
from tests.factories import make_collection, make_group, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    viewer, editor, owner, member, stranger, staff = (make_user() for _ in range(6))
    staff.is_staff = True
    staff.save()
    group = make_group("readers", member)
    collection = make_collection("handbook", owner=owner, viewer=[viewer], editor=[editor])
    collection_grant(actor=system_user(), collection=collection, group=group, role=Role.VIEWER)
    other = make_collection("secret", owner=make_user())
    return locals()


@pytest.mark.parametrize(
    "who, role",
    [
        ("viewer", Role.VIEWER),
        ("editor", Role.EDITOR),
        ("owner", Role.OWNER),
        ("member", Role.VIEWER),
        ("stranger", None),
        ("staff", Role.OWNER),
    ],
)
def test_role_for_each_kind_of_grant(world, who, role):
    assert access.role_for(world[who], world["collection"]) == role


def test_anonymous_has_no_role_and_reads_nothing(world):
    anonymous = AnonymousUser()
    assert access.role_for(anonymous, world["collection"]) is None
    assert list(selectors.collection_list(user=anonymous)) == []


def test_readable_collections_are_exactly_the_granted_ones(world):
    assert [c.name for c in selectors.collection_list(user=world["viewer"])] == ["handbook"]
    assert [c.name for c in selectors.collection_list(user=world["member"])] == ["handbook"]
    assert list(selectors.collection_list(user=world["stranger"])) == []
    assert {c.name for c in selectors.collection_list(user=world["staff"])} == {"handbook", "secret"}


def test_highest_of_direct_and_group_grant_wins(world):
    collection_grant(actor=system_user(), collection=world["collection"], group=make_group("eds", world["viewer"]),
                              role=Role.EDITOR)  # fmt: skip
    assert access.role_for(world["viewer"], world["collection"]) == Role.EDITOR
    assert access.can_edit(world["viewer"], world["collection"])


def test_collection_get_is_404_without_access(world):
    with pytest.raises(Http404):
        selectors.collection_get(user=world["stranger"], pk=world["collection"].pk)
    with pytest.raises(Http404):
        selectors.collection_get(user=world["viewer"], pk=world["other"].pk)


def test_collection_get_with_minimum_role(world):
    pk = world["collection"].pk
    assert selectors.collection_get(user=world["editor"], pk=pk, minimum=Role.EDITOR)
    with pytest.raises(Http404):
        selectors.collection_get(user=world["viewer"], pk=pk, minimum=Role.EDITOR)


def test_inactive_user_reads_nothing(world):
    viewer = world["viewer"]
    viewer.is_active = False
    viewer.save()
    assert list(selectors.collection_list(user=viewer)) == []


def test_revoking_a_grant_takes_effect_at_once(world):
    collection_revoke(actor=system_user(), collection=world["collection"], user=world["viewer"])
    with pytest.raises(Http404):
        selectors.collection_get(user=world["viewer"], pk=world["collection"].pk)


def test_within_a_request_readable_collections_are_worked_out_once_and_again_after_a_grant(
    django_assert_num_queries,
):
    reader = make_user()
    first, second = make_collection(viewer=[reader]), make_collection()
    with access.request_cache():
        assert set(access.readable_collection_ids(reader)) == {first.pk}
        assert access.can_read(reader, first)
        with django_assert_num_queries(0):
            assert set(access.readable_collection_ids(reader)) == {first.pk}
            assert access.can_read(reader, first)
        collection_grant(actor=system_user(), collection=second, role="viewer", user=reader)
        assert set(access.readable_collection_ids(reader)) == {first.pk, second.pk}
        collection_revoke(actor=system_user(), collection=first, user=reader)
        assert set(access.readable_collection_ids(reader)) == {second.pk}
        assert not access.can_read(reader, first)


def test_outside_a_request_nothing_is_cached():
    reader = make_user()
    collection = make_collection()
    assert not access.can_read(reader, collection)
    collection_grant(actor=system_user(), collection=collection, role="viewer", user=reader)  # no forget() needed
    assert access.can_read(reader, collection)
    assert list(access.readable_collection_ids(reader)) == [{"pk": collection.pk}]
