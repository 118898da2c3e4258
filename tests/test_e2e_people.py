"""People in the browser (issue 15), at 1280 px and 390 px: staff invite a person, grant them a
collection with the name suggested as they type, check what the person can read and why, and
the person sets their password from the one-time link and signs in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from kb.services.collections import collection_create
from tests.factories import make_group
from tests.helpers import PASSWORD, kb_web_server, sign_in
from tests.ui import check_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(transactional_db) -> Iterator[str]:
    """kb's web server alone: nothing here asks the model."""
    with kb_web_server() as url:
        yield url


def _open_nav(page, name: str) -> None:
    menu = page.locator("details.menu > summary")
    if menu.count() and menu.is_visible():  # the phone layout folds the links into a menu
        menu.click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def test_invite_a_person_grant_them_access_and_they_set_a_password(sized_page, server):
    page, base = sized_page, server
    admin = User.objects.create_user("admin", password=PASSWORD, is_staff=True)
    make_group("platform")
    collection = collection_create(user=admin, name="Operations")

    sign_in(page, base, "admin")
    _open_nav(page, "People")
    expect(page.locator("h1")).to_have_text("People")
    check_page(page, "people")

    # Invite: username, name, e-mail, groups; kb shows the set-password link once.
    page.get_by_role("link", name="Invite a person").click()
    page.get_by_label("Username").fill("newbie")
    page.get_by_label("First name").fill("Nora")
    page.get_by_label("Last name").fill("Newman")
    page.get_by_label("E-mail").fill("nora@example.org")
    page.get_by_label("platform").check()
    check_page(page, "people-new")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("h1")).to_have_text("Invited newbie")
    link = page.locator("#set-password-link").inner_text().strip()
    expect(page.get_by_role("button", name="Copy link")).to_be_visible()
    assert link.startswith(base + "/reset/")
    check_page(page, "people-link")

    # The list finds them by what was typed; the search answers as you type.
    page.goto(f"{base}/people/")
    page.get_by_label("Search people").fill("nora")
    expect(page.locator("#people-results tbody tr")).to_have_count(1)
    expect(page.locator("#people-results")).to_contain_text("platform")

    # Grant: the name box suggests active users as the owner types.
    page.goto(f"{base}/collections/{collection.pk}/access/")
    name_box = page.get_by_role("combobox", name="User or group name")
    name_box.press_sequentially("new", delay=50)
    expect(page.locator("#principal-options option[value=newbie]")).to_have_count(1)
    name_box.fill("newbie")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("table.grants")).to_contain_text("newbie")
    check_page(page, "collection-access")

    # What they can read, and why: from the access page to the person's page.
    page.locator("table.who-has-access").get_by_role("link", name="newbie").click()
    expect(page.locator("h1")).to_contain_text("newbie")
    expect(page.locator("table.person-access")).to_contain_text("Operations")
    expect(page.locator("table.person-access")).to_contain_text("direct grant: viewer")
    check_page(page, "person")

    # The person follows the link, sets a password and signs in.
    page.context.clear_cookies()
    page.goto(link)
    expect(page.locator("h1")).to_have_text("Set your password")
    check_page(page, "set-password")
    page.get_by_label("New password", exact=True).fill(PASSWORD)
    page.get_by_label("New password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Set password").click()
    expect(page.locator("h1")).to_have_text("Password set")
    sign_in(page, base, "newbie")
    expect(page.get_by_role("link", name="Operations").first).to_be_visible()
