"""People inside kb (issue 15): invitations and set-password links, resets, deactivation,
groups, name suggestions for the grant form, and a person's access with its reasons."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.urls import reverse

from kb import access, selectors
from kb.models import AuditEvent, Collection, Role
from kb.services.collections import collection_grant
from kb.services.people import person_groups_set, person_invite, person_password_reset, person_set_active
from kb.services.tokens import api_token_create
from tests.factories import make_collection, make_group, make_user

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-brand-new-passphrase-9"


@pytest.fixture
def staff():
    return make_user("staffer", is_staff=True)


def _link_path(html: str) -> str:
    found = re.search(r'<code id="set-password-link">https?://[^/<]+(/reset/[^<]+)</code>', html)
    assert found, "no set-password link on the page"
    return found.group(1)


def _set_password(client, path: str, password: str = NEW_PASSWORD):
    """Follow a set-password link as its recipient would; the response of the final POST."""
    landing = client.get(path)
    assert landing.status_code == 302  # Django hides the token from the address bar first
    form_url = landing["Location"]
    assert client.get(form_url).context["validlink"]
    return client.post(form_url, {"new_password1": password, "new_password2": password})


def _can_sign_in(client, username: str, password: str) -> bool:
    client.logout()
    response = client.post(reverse("login"), {"username": username, "password": password})
    return response.status_code == 302 and response.wsgi_request.user.is_authenticated


# --- invitations and set-password links -----------------------------------------------------


def test_invite_creates_a_user_without_password_in_groups_and_audits_it(staff):
    group = make_group("ops")
    person, link = person_invite(actor=staff, username="newbie", email="n@example.org", first_name="New",
                                 groups=[group])  # fmt: skip
    person.refresh_from_db()
    assert not person.has_usable_password()
    assert list(person.groups.all()) == [group]
    assert person.is_active and not person.is_staff
    assert link.uidb64 and link.token
    event = AuditEvent.objects.get(action="person.invite")
    assert event.actor == staff and event.target == "user newbie" and event.detail == {"groups": ["ops"]}


def test_invite_refuses_a_username_taken_in_any_case(staff):
    make_user("Alice")
    with pytest.raises(ValidationError):
        person_invite(actor=staff, username="alice")


def test_only_staff_invite():
    owner = make_user("owner")
    make_collection(owner=owner)
    with pytest.raises(PermissionError):
        person_invite(actor=owner, username="sneaky")
    assert not User.objects.filter(username="sneaky").exists()


def test_invite_page_shows_the_link_once_and_the_link_sets_a_password(client, staff):
    client.force_login(staff)
    response = client.post(reverse("person_invite"), {"username": "newbie", "first_name": "New"})
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    path = _link_path(response.content.decode())
    client.logout()
    done = _set_password(client, path)
    assert done.status_code == 302 and done["Location"] == reverse("password_reset_complete")
    assert _can_sign_in(client, "newbie", NEW_PASSWORD)
    client.logout()
    assert client.get(path).status_code == 200  # the link is spent: the page says so
    assert not client.get(path).context["validlink"]


def test_invite_form_errors_come_back_on_the_form(client, staff):
    make_user("taken")
    client.force_login(staff)
    response = client.post(reverse("person_invite"), {"username": "taken"})
    assert response.status_code == 400
    assert "already exists" in response.content.decode()


# --- resets ----------------------------------------------------------------------------------


def test_reset_stops_the_old_password_and_the_old_link_and_signs_the_person_out(client, staff):
    person = make_user("forgetful")
    session = client.__class__()
    session.force_login(person)
    assert session.get(reverse("home")).status_code == 200
    first = person_password_reset(actor=staff, person=person)
    person.refresh_from_db()
    assert not person.check_password("pw-for-tests-1")
    assert session.get(reverse("home")).status_code == 302  # their session ended
    second = person_password_reset(actor=staff, person=person)
    old = reverse("password_reset_confirm", kwargs={"uidb64": first.uidb64, "token": first.token})
    assert not client.get(old).context["validlink"]
    new = reverse("password_reset_confirm", kwargs={"uidb64": second.uidb64, "token": second.token})
    _set_password(client, new)
    assert _can_sign_in(client, "forgetful", NEW_PASSWORD)
    assert AuditEvent.objects.filter(action="person.password_reset", target="user forgetful").count() == 2


def test_reset_page_shows_a_fresh_link(client, staff):
    person = make_user("forgetful")
    client.force_login(staff)
    response = client.post(reverse("person_password_reset", args=[person.pk]))
    assert response.status_code == 200
    assert "/reset/" in _link_path(response.content.decode())


def test_staff_cannot_take_over_a_superuser(client, staff):
    root = make_user("root", is_superuser=True, is_staff=True)
    with pytest.raises(PermissionError):
        person_password_reset(actor=staff, person=root)
    with pytest.raises(PermissionError):
        person_set_active(actor=staff, person=root, active=False)
    client.force_login(staff)
    response = client.post(reverse("person_password_reset", args=[root.pk]), follow=True)
    assert "/reset/" not in response.content.decode()
    assert "Only a superuser" in response.content.decode()
    root.refresh_from_db()
    assert root.has_usable_password() and root.is_active


def test_a_superuser_may_reset_another_superuser():
    root = make_user("root", is_superuser=True, is_staff=True)
    other = make_user("other-root", is_superuser=True, is_staff=True)
    person_password_reset(actor=root, person=other)
    other.refresh_from_db()
    assert not other.has_usable_password()


# --- deactivation ----------------------------------------------------------------------------


def test_deactivated_people_cannot_sign_in_use_sessions_or_tokens(client, staff):
    person = make_user("leaver")
    collection = make_collection(viewer=[person])
    _, raw = api_token_create(user=person, name="script")
    api = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.get(reverse("api_collections"), **api).status_code == 200
    session = client.__class__()
    session.force_login(person)
    assert session.get(reverse("api_tokens")).status_code == 200

    person_set_active(actor=staff, person=person, active=False)

    assert client.get(reverse("api_collections"), **api).status_code == 401
    assert session.get(reverse("api_tokens")).status_code == 302  # their session ended
    assert not access.can_read(person, collection)
    assert not _can_sign_in(client, "leaver", "pw-for-tests-1")
    assert AuditEvent.objects.filter(action="person.deactivate", target="user leaver").exists()

    person_set_active(actor=staff, person=person, active=True)
    assert client.get(reverse("api_collections"), **api).status_code == 200
    assert _can_sign_in(client, "leaver", "pw-for-tests-1")
    assert AuditEvent.objects.filter(action="person.activate", target="user leaver").exists()


def test_staff_cannot_deactivate_themselves(client, staff):
    with pytest.raises(ValidationError):
        person_set_active(actor=staff, person=staff, active=False)
    client.force_login(staff)
    response = client.post(reverse("person_deactivate", args=[staff.pk]), follow=True)
    assert "cannot deactivate yourself" in response.content.decode()
    staff.refresh_from_db()
    assert staff.is_active


def test_a_deactivated_persons_link_does_not_work(client, staff):
    person = make_user("leaver")
    link = person_password_reset(actor=staff, person=person)
    person_set_active(actor=staff, person=person, active=False)
    path = reverse("password_reset_confirm", kwargs={"uidb64": link.uidb64, "token": link.token})
    assert not client.get(path).context["validlink"]


def test_deactivate_view_redirects_to_the_person_with_a_message(client, staff):
    person = make_user("leaver")
    client.force_login(staff)
    response = client.post(reverse("person_deactivate", args=[person.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("person_detail", args=[person.pk])
    assert "Deactivated leaver" in response.content.decode()
    person.refresh_from_db()
    assert not person.is_active


# --- groups ----------------------------------------------------------------------------------


def test_groups_change_is_audited_join_and_leave(client, staff):
    old, new = make_group("old"), make_group("new")
    person = make_user("mover")
    person.groups.add(old)
    client.force_login(staff)
    response = client.post(reverse("person_groups", args=[person.pk]), {"groups": [new.pk]})
    assert response.status_code == 302
    assert list(person.groups.all()) == [new]
    assert AuditEvent.objects.filter(action="group.join", detail__group="new").exists()
    assert AuditEvent.objects.filter(action="group.leave", detail__group="old").exists()


def test_groups_set_by_a_non_staff_person_is_refused():
    owner = make_user("owner")
    person = make_user("p")
    with pytest.raises(PermissionError):
        person_groups_set(actor=owner, person=person, groups=[make_group()])


# --- the people list -------------------------------------------------------------------------


def test_people_list_searches_and_filters_for_staff(client, staff):
    make_user("alice", first_name="Alice", email="alice@example.org")
    make_user("bob", is_active=False)
    access.system_user()
    client.force_login(staff)
    page = client.get(reverse("people")).content.decode()
    assert "alice" in page and "bob" in page and access.SYSTEM_USERNAME not in page
    found = client.get(reverse("people"), {"q": "example.org"}).content.decode()
    assert "alice" in found and "bob" not in found
    inactive = client.get(reverse("people"), {"status": "inactive"}).content.decode()
    assert ">bob<" in inactive and ">alice<" not in inactive


def test_people_search_over_htmx_returns_the_results_partial(client, staff):
    client.force_login(staff)
    response = client.get(reverse("people"), {"q": "staff"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="people-results"') and "<html" not in html


def test_people_pages_are_hidden_from_non_staff(client):
    owner = make_user("owner")
    make_collection(owner=owner)
    client.force_login(owner)
    assert client.get(reverse("people")).status_code == 404
    assert client.get(reverse("person_invite")).status_code == 404


# --- suggestions for the grant form ----------------------------------------------------------


def test_suggestions_name_active_users_only_and_at_most_ten(client):
    owner = make_user("owner")
    make_collection(owner=owner)
    for n in range(12):
        make_user(f"dev{n:02d}", email=f"dev{n}@secret.example")
    make_user("devgone", is_active=False)
    client.force_login(owner)
    html = client.get(reverse("principal_suggest"), {"principal": "dev", "kind": "user"}).content.decode()
    assert html.count("<option") == 10
    assert "devgone" not in html and "secret.example" not in html
    assert html.lstrip().startswith('<datalist id="principal-options"')


def test_suggestions_for_groups(client, staff):
    make_group("platform-team")
    make_group("sales")
    client.force_login(staff)
    html = client.get(reverse("principal_suggest"), {"principal": "plat", "kind": "group"}).content.decode()
    assert 'value="platform-team"' in html and "sales" not in html


def test_suggestions_are_for_staff_and_owners_only(client):
    viewer = make_user("viewer")
    make_collection(viewer=[viewer])
    client.force_login(viewer)
    assert client.get(reverse("principal_suggest"), {"principal": "a"}).status_code == 404


def test_access_page_offers_suggestions_and_has_no_empty_header(client):
    owner = make_user("owner")
    collection = make_collection(owner=owner)
    client.force_login(owner)
    html = client.get(reverse("collection_access", args=[collection.pk])).content.decode()
    assert 'list="principal-options"' in html and reverse("principal_suggest") in html
    assert "<th></th>" not in html
    assert reverse("person_detail", args=[owner.pk]) in html


def test_granting_a_suggested_user_works(client):
    owner = make_user("owner")
    collection = make_collection(owner=owner)
    make_user("newbie")
    client.force_login(owner)
    response = client.post(
        reverse("grant_add", args=[collection.pk]), {"principal": "newbie", "kind": "user", "role": "viewer"}
    )
    assert response.status_code == 302
    assert collection.grants.filter(user__username="newbie", role=Role.VIEWER).exists()


# --- what a person can read, and why ----------------------------------------------------------


def test_person_access_gives_each_collection_its_role_and_reasons(staff):
    person = make_user("reader")
    team = make_group("team", person)
    make_collection("direct", viewer=[person])
    make_collection("via-group", editor=[team])
    both = make_collection("both", viewer=[person], owner=make_user(is_staff=True))
    collection_grant(actor=staff, collection=both, group=team, role=Role.EDITOR)
    public = make_collection("public")
    public.open_to_all = True
    public.save()
    make_collection("hidden")
    lines = {line.collection.name: line for line in selectors.person_access(user=staff, person=person)}
    assert set(lines) == {"direct", "via-group", "both", "public"}
    assert lines["direct"].reasons == ["direct grant: viewer"]
    assert lines["via-group"].reasons == ["through group team: editor"]
    assert lines["both"].role == Role.EDITOR and len(lines["both"].reasons) == 2
    assert lines["public"].reasons == ["open to all signed-in users: viewer"]
    for collection in Collection.objects.all():
        expected = access.role_for(person, collection)
        got = lines[collection.name].role if collection.name in lines else None
        assert got == expected, collection.name


def test_person_access_notes_staff_and_deactivation(staff):
    make_collection("c1")
    other = make_user("other-staff", is_staff=True)
    lines = selectors.person_access(user=staff, person=other)
    assert lines and all(line.reasons == ["site staff: administers everything"] for line in lines)
    gone = make_user("gone", is_active=False)
    assert selectors.person_access(user=staff, person=gone) == []


def test_an_owner_sees_only_their_own_collections_on_a_persons_page(client):
    owner = make_user("owner")
    person = make_user("reader")
    mine = make_collection("mine", owner=owner, viewer=[person])
    make_collection("secret-project", viewer=[person])
    client.force_login(owner)
    html = client.get(reverse("person_detail", args=[person.pk])).content.decode()
    assert "mine" in html and "secret-project" not in html
    assert reverse("person_password_reset", args=[person.pk]) not in html
    assert mine.name in html


def test_persons_page_is_404_for_others_and_for_inactive_people_to_owners(client):
    owner = make_user("owner")
    make_collection(owner=owner)
    viewer = make_user("viewer")
    make_collection(viewer=[viewer])
    gone = make_user("gone", is_active=False)
    client.force_login(viewer)
    assert client.get(reverse("person_detail", args=[owner.pk])).status_code == 404
    client.force_login(owner)
    assert client.get(reverse("person_detail", args=[gone.pk])).status_code == 404
    assert client.get(reverse("person_detail", args=[viewer.pk])).status_code == 200
    assert client.get(reverse("person_detail", args=[access.system_user().pk])).status_code == 404


def test_staff_see_an_inactive_persons_page(client, staff):
    gone = make_user("gone", is_active=False)
    client.force_login(staff)
    response = client.get(reverse("person_detail", args=[gone.pk]))
    assert response.status_code == 200
    assert reverse("person_reactivate", args=[gone.pk]) in response.content.decode()
