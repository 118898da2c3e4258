"""The page shell every page shares (issue 15): landmarks and skip links, the first visit,
error pages that speak to people, and colours that stay readable in both themes."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.urls import reverse
from django.views.defaults import permission_denied, server_error

from tests.factories import make_collection, make_user

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
# kb.css (the shell and theme variables) first, then pages.css, as base.html loads them.
CSS = "\n".join((ROOT / "static" / "kb" / name).read_text() for name in ("kb.css", "pages.css"))
JS = (ROOT / "static" / "kb" / "kb.js").read_text()
# What a person must never be shown: server addresses, internal paths, operator commands.
INTERNAL = re.compile(
    r"https?://|localhost|127\.0\.0\.1|\bmake (help|setup|run|llm|test|lint|clean|reset)\b|Traceback|\.py\b|settings\."
)


class _Page(HTMLParser):
    """The facts about a page's markup the checks below need."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.ids: set[str] = set()
        self.labels_for: set[str] = set()
        self.text: list[str] = []
        self._skip = 0
        self._in_label = 0
        self.wrapped: list[dict] = []  # controls inside a <label>: labelled by it

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "label" and attributes.get("for"):
            self.labels_for.add(attributes["for"])
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "label":
            self._in_label += 1
        elif self._in_label and tag in ("input", "select", "textarea"):
            self.wrapped.append(attributes)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "label":
            self._in_label -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def parse(html: str | bytes) -> _Page:
    page = _Page()
    page.feed(html.decode() if isinstance(html, bytes) else html)
    return page


def assert_sound(html: str | bytes) -> _Page:
    """One h1, the landmarks and skip link, every control labelled, every aria reference resolved."""
    page = parse(html)
    assert len(page.all("h1")) == 1, "a page has exactly one h1"
    assert page.all("header") and page.all("main")
    main = page.all("main")[0]
    assert main.get("id") == "content"
    assert any(a.get("href") == "#content" and "skip-link" in a.get("class", "") for a in page.all("a"))
    for nav in page.all("nav"):
        assert nav.get("aria-label"), "every nav is named"
    for tag in ("input", "select", "textarea"):
        for control in page.all(tag):
            if control.get("type") in ("hidden", "submit", "button"):
                continue
            named = (control.get("id") in page.labels_for or control.get("aria-label")
                     or control.get("aria-labelledby") or control in page.wrapped)  # fmt: skip
            assert named, f"unlabelled {tag}: {control}"
    for _, attributes in page.tags:
        for ref in ("aria-describedby", "aria-labelledby"):
            for target in (attributes.get(ref) or "").split():
                assert target in page.ids, f"{ref}={target!r} points at nothing"
    return page


def visible_text(html: str | bytes) -> str:
    return " ".join(" ".join(parse(html).text).split())


# --- landmarks, skip links, navigation -------------------------------------------------------


def test_every_page_has_a_skip_link_landmarks_and_a_named_navigation(client):
    staff = make_user(is_staff=True)
    make_collection("Runbooks", owner=staff)
    client.force_login(staff)
    html = client.get(reverse("home")).content.decode()
    page = assert_sound(html)
    # The question box has its own skip link where there is one.
    assert any(a.get("href") == "#id_question" for a in page.all("a"))
    assert 'aria-label="Main"' in html and '<details class="menu">' in html
    # The menu holds the links; who is signed in stays outside it, visible on a phone too.
    assert html.index('class="who"') > html.index("</details>")
    assert 'aria-current="page"' in html
    assert 'id="kb-alerts"' in html and 'aria-live="polite"' in html


def test_the_pages_of_the_shell_are_sound(client, tmp_path, settings):
    staff = make_user(is_staff=True)
    collection = make_collection("Runbooks", owner=staff)
    client.force_login(staff)
    for name, args in [
        ("home", []),
        ("api_tokens", []),
        ("password_change", []),
        ("audit_log", []),
        ("source_create", [collection.pk]),
    ]:
        response = client.get(reverse(name, args=args))
        assert response.status_code == 200, name
        assert_sound(response.content)
    client.logout()
    assert_sound(client.get(reverse("login")).content)


def test_the_password_form_shows_the_rules_its_fields_point_at(client):
    client.force_login(make_user())
    page = assert_sound(client.get(reverse("password_change")).content)
    assert "id_new_password1_helptext" in page.ids
    assert "at least 8 characters" in visible_text(client.get(reverse("password_change")).content)


def test_a_refused_token_name_comes_back_as_422_so_htmx_shows_the_error_in_place(client):
    client.force_login(make_user())
    response = client.post(reverse("api_tokens"), {"name": ""}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert "This field is required." in response.content.decode()
    assert client.post(reverse("api_tokens"), {"name": ""}).status_code == 400


# --- the first visit -------------------------------------------------------------------------


def test_a_staff_members_first_visit_shows_the_next_steps_and_the_new_collection_form(client):
    client.force_login(make_user(is_staff=True))
    html = client.get(reverse("home")).content.decode()
    text = visible_text(html)
    assert "Get started in three steps" in text
    for step in ("Create a collection", "Upload documents", "Ask a question"):
        assert step in text
    assert "for example" in text and 'class="example-question"' in html
    assert 'id="id_name"' in html and "Create collection" in text
    assert 'href="#new-collection"' in html and 'id="new-collection"' in html


def test_someone_who_can_read_nothing_is_told_who_can_give_access(client):
    client.force_login(make_user("newcomer"))
    text = visible_text(client.get(reverse("home")).content)
    assert "You can't read any collection yet" in text
    assert "A collection's owner or a kb administrator can give you access" in text
    assert "newcomer" in text
    assert "Create collection" not in text and "Get started" not in text


def test_someone_with_collections_sees_them_not_the_first_steps(client):
    reader = make_user()
    make_collection("Runbooks", viewer=[reader])
    client.force_login(reader)
    text = visible_text(client.get(reverse("home")).content)
    assert "Runbooks" in text and "Get started" not in text and "can't read any collection" not in text


# --- errors for people -----------------------------------------------------------------------


def test_a_missing_page_is_a_friendly_404_with_the_way_back(client):
    client.force_login(make_user())
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert_sound(response.content)
    text = visible_text(response.content)
    assert "Page not found" in text and "Back to your collections" in text
    assert not INTERNAL.search(text), text


def test_the_500_page_renders_without_a_request_or_database_and_names_nothing_internal():
    html = render_to_string("500.html")
    assert "Something went wrong" in html and 'href="/"' in html
    assert not INTERNAL.search(visible_text(html))
    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500 and b"Something went wrong" in response.content


def test_a_refusal_is_a_friendly_403(rf):
    request = rf.get("/")
    request.user = make_user()
    response = permission_denied(request, PermissionDenied())
    assert response.status_code == 403
    text = visible_text(response.content)
    assert "You can't do that here" in text and not INTERNAL.search(text)


def test_a_stale_form_is_a_friendly_403_that_says_what_to_do():
    make_user("alice")
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "alice", "password": "x"})
    assert response.status_code == 403
    text = visible_text(response.content)
    assert "Please try again" in text and "reload the page" in text and "Nothing was changed" in text
    assert "CSRF" not in text and not INTERNAL.search(text)


def test_the_htmx_error_messages_name_nothing_internal():
    assert 'addEventListener("htmx:responseError"' in JS and '"htmx:sendError"' in JS
    messages = re.findall(r'"([^"]{25,})"', JS.split("// --- Page shell")[1])
    assert "Couldn't reach kb. Check your connection and try again." in messages
    for message in messages:
        assert not INTERNAL.search(message), message


# --- themes ----------------------------------------------------------------------------------


def _variables(block: str) -> dict[str, str]:
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", block))


def _themes() -> tuple[dict, dict]:
    light = _variables(CSS[CSS.index(":root {") : CSS.index("}", CSS.index(":root {"))])
    dark_start = CSS.index("@media (prefers-color-scheme: dark)")
    dark = {**light, **_variables(CSS[dark_start : CSS.index("}", CSS.index(":root {", dark_start))])}
    return light, dark


def _luminance(hex_colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# Every text colour and the backgrounds kb.css sets it on.
TEXT_PAIRS = [
    ("fg", "bg"), ("fg", "surface"), ("fg", "surface-2"), ("fg", "accent-soft"), ("fg", "warn-soft"), ("fg", "hit"),
    ("muted", "bg"), ("muted", "surface"), ("muted", "accent-soft"),
    ("accent", "bg"), ("accent", "surface"), ("accent", "accent-soft"), ("accent-fg", "accent"),
    ("danger", "bg"), ("danger", "surface"), ("danger", "danger-soft"), ("danger-fg", "danger"),
    ("ok", "surface"), ("ok", "ok-soft"), ("ok-fg", "ok"), ("warn", "surface"), ("warn", "warn-soft"),
]  # fmt: skip


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_text_colour_reaches_4_5_to_1_on_its_backgrounds(theme):
    colours = dict(zip(["light", "dark"], _themes(), strict=True))[theme]
    low = [
        (fg, bg, round(contrast(colours[fg], colours[bg]), 2))
        for fg, bg in TEXT_PAIRS
        if contrast(colours[fg], colours[bg]) < 4.5
    ]
    assert not low, low
    # Focus rings and form borders: 3:1 against the page (WCAG 1.4.11).
    for part in ("focus", "border-strong"):
        assert contrast(colours[part], colours["surface"]) >= 3, part


def test_the_dark_theme_redefines_every_colour_of_the_light_one():
    light, _ = _themes()
    dark_start = CSS.index("@media (prefers-color-scheme: dark)")
    dark_only = _variables(CSS[dark_start : CSS.index("}", CSS.index(":root {", dark_start))])
    assert set(light) == set(dark_only)


def test_a_danger_button_never_has_the_same_colour_for_text_and_background():
    rule = re.search(r"button\.danger, \.button\.danger \{([^}]*)\}", CSS).group(1)
    assert "color: var(--danger-fg)" in rule and "background: var(--danger)" in rule


def test_the_stylesheet_has_no_comment_that_ends_early():
    """A `*/` inside a comment closes it early and the next rule (once, :root) is lost."""
    without_comments = re.sub(r"/\*.*?\*/", "", CSS, flags=re.S)
    assert "*/" not in without_comments and "/*" not in without_comments
    assert without_comments.lstrip().startswith(":root {")
