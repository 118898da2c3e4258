"""The Confluence connector against a stand-in speaking Confluence's REST API v1 (no database)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingestion.connectors import Limits, SourceConfig, SourceError, open_connector
from ingestion.connectors.confluence import ConfluenceConnector
from tests.confluence_standin import ConfluenceStandin

USER = "sync@corp.example"
TOKEN = "ATATT3xFfGF0-secret-token-42"
LOCAL = Limits(allowed_hosts=frozenset({"127.0.0.1"}))


@pytest.fixture
def wiki():
    with ConfluenceStandin(username=USER, token=TOKEN) as standin:
        yield standin


def connect(
    wiki: ConfluenceStandin, *, credentials=None, limits=LOCAL, include=(), exclude=(), **options
) -> ConfluenceConnector:
    config = SourceConfig(
        kind="confluence",
        location=wiki.url,
        options={"space": "KB", **options},
        credentials={"username": USER, "token": TOKEN} if credentials is None else credentials,
        limits=limits,
        include=include,
        exclude=exclude,
    )
    return open_connector(config)  # type: ignore[return-value]


def listed(connector: ConfluenceConnector) -> dict[str, str]:
    listing = connector.list_pages(known={}, cursor={})
    assert listing.complete, listing.failures
    return {page.path: page.ref for page in listing.pages}


def tree(wiki: ConfluenceStandin) -> dict[str, str]:
    home = wiki.add("Home", "<p>Welcome</p>")
    guides = wiki.add("Guides", "<p>All guides</p>", parent=home.id)
    install = wiki.add("Install", "<p>Run the installer.</p>", parent=guides.id, when="2024-06-01T09:30:00.000+02:00")
    other = wiki.add("Other")
    return {"home": home.id, "guides": guides.id, "install": install.id, "other": other.id}


def content_requests(wiki: ConfluenceStandin) -> list[str]:
    return [seen.path for seen in wiki.requests if seen.path.split("?")[0].endswith("/rest/api/content")]


def test_first_listing_has_breadcrumb_paths_versions_urls_and_times(wiki):
    tree(wiki)
    listing = connect(wiki).list_pages(known={}, cursor={})

    pages = {page.path: page for page in listing.pages}
    assert sorted(pages) == ["Home.html", "Home/Guides.html", "Home/Guides/Install.html", "Other.html"]
    install = pages["Home/Guides/Install.html"]
    assert install.ref == "1"
    assert install.title == "Install"
    assert install.url == f"{wiki.url}/display/KB/Install"
    assert install.modified == datetime(2024, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    assert pages["Home.html"].modified == datetime(2024, 5, 2, 10, 15, 30, tzinfo=UTC)
    assert listing.complete and not listing.failures
    # Four pages, two a response: the connector followed `_links.next`.
    assert len(content_requests(wiki)) == 2
    assert any("start=2" in path for path in content_requests(wiki))


def test_listing_asks_for_current_pages_with_version_and_ancestors(wiki):
    tree(wiki)
    listed(connect(wiki))
    first = content_requests(wiki)[0]
    for part in ("spaceKey=KB", "type=page", "status=current", "expand=version%2Cancestors"):
        assert part in first or part.replace("%2C", ",") in first


def test_fetch_returns_a_small_html_document_with_the_storage_body(wiki):
    ids = tree(wiki)
    wiki.edit(ids["other"], title="Über <uns>", body='<p>Grüße</p><ac:structured-macro ac:name="info"/>')
    connector = connect(wiki)
    pages = {page.title: page for page in connector.list_pages(known={}, cursor={}).pages}

    body = connector.fetch(pages["Install"]).decode("utf-8")
    assert body == (
        '<html><head><meta charset="utf-8"><title>Install</title></head>'
        "<body><h1>Install</h1><p>Run the installer.</p></body></html>"
    )
    other = connector.fetch(pages["Über <uns>"]).decode("utf-8")
    assert "<title>Über &lt;uns&gt;</title>" in other
    assert '<p>Grüße</p><ac:structured-macro ac:name="info"/>' in other
    assert any("expand=body.storage" in seen.path for seen in wiki.requests)


def test_an_edit_changes_only_that_pages_ref(wiki):
    ids = tree(wiki)
    connector = connect(wiki)
    before = listed(connector)
    wiki.edit(ids["install"], body="<p>Run the new installer.</p>")
    after = listed(connector)

    assert after.keys() == before.keys()
    changed = {path for path in after if after[path] != before[path]}
    assert changed == {"Home/Guides/Install.html"}
    assert after["Home/Guides/Install.html"] == "2"
    page = next(p for p in connector.list_pages(known={}, cursor={}).pages if p.title == "Install")
    assert b"new installer" in connector.fetch(page)


def test_a_deleted_page_leaves_the_listing(wiki):
    ids = tree(wiki)
    connector = connect(wiki)
    listed(connector)
    wiki.delete(ids["other"])
    assert "Other.html" not in listed(connector)


def test_a_rename_moves_the_page_and_its_children(wiki):
    ids = tree(wiki)
    connector = connect(wiki)
    listed(connector)
    wiki.edit(ids["guides"], title="Handbooks")
    after = listed(connector)

    assert "Home/Guides.html" not in after and "Home/Guides/Install.html" not in after
    assert after["Home/Handbooks.html"] == "2"
    assert after["Home/Handbooks/Install.html"] == "1"  # moved by its parent's rename, content unchanged


def test_pagination_lists_every_page_past_the_page_size(wiki):
    for number in range(7):
        wiki.add(f"Page {number}")
    assert len(listed(connect(wiki))) == 7
    starts = [path for path in content_requests(wiki) if "start=" in path]
    assert len(content_requests(wiki)) == 4 and len(starts) == 3


def test_include_and_exclude_globs_filter_paths(wiki):
    ids = tree(wiki)
    wiki.add("Secret notes", parent=ids["home"])
    connector = connect(wiki, include=("Home/*",), exclude=("*/Secret*",))
    assert sorted(listed(connector)) == ["Home/Guides.html", "Home/Guides/Install.html"]


def test_titles_are_made_safe_and_clashing_siblings_stay_apart(wiki):
    home = wiki.add("Home")
    first = wiki.add("CI/CD", "<p>one</p>", parent=home.id)
    second = wiki.add("CI-CD", "<p>two</p>", parent=home.id)
    wiki.add("Pipelines", parent=second.id)
    wiki.add("..\\hidden\x07", parent=home.id)
    paths = listed(connect(wiki))
    assert sorted(paths) == sorted(
        [
            "Home.html",
            "Home/-hidden.html",
            "Home/CI-CD.html",
            f"Home/CI-CD ({second.id}).html",
            f"Home/CI-CD ({second.id})/Pipelines.html",
        ]
    )
    assert int(first.id) < int(second.id)  # the older page keeps the plain path


def test_credentials_go_in_the_authorization_header(wiki):
    tree(wiki)
    listed(connect(wiki))
    expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
    assert wiki.requests and all(seen.headers.get("Authorization") == expected for seen in wiki.requests)
    assert all(TOKEN not in seen.path for seen in wiki.requests)


def test_a_personal_access_token_alone_is_sent_as_a_bearer_token():
    with ConfluenceStandin(token=TOKEN) as wiki:
        wiki.add("Home")
        assert listed(connect(wiki, credentials={"token": TOKEN})) == {"Home.html": "1"}
        assert all(seen.headers.get("Authorization") == f"Bearer {TOKEN}" for seen in wiki.requests)


def test_wrong_credentials_are_a_source_error_without_the_token(wiki):
    tree(wiki)
    wrong = "wrong-token-that-must-not-leak"
    with pytest.raises(SourceError) as caught:
        connect(wiki, credentials={"username": USER, "token": wrong}).list_pages(known={}, cursor={})
    message = str(caught.value)
    assert "refused the credentials" in message
    assert wrong not in message and TOKEN not in message
    with pytest.raises(SourceError, match="refused the credentials"):
        connect(wiki, credentials={}).list_pages(known={}, cursor={})


def test_an_unreachable_server_is_a_source_error():
    with ConfluenceStandin(username=USER, token=TOKEN) as wiki:
        url = wiki.url
    config = SourceConfig(
        kind="confluence",
        location=url,
        options={"space": "KB"},
        credentials={"username": USER, "token": TOKEN},
        limits=LOCAL,
    )
    with pytest.raises(SourceError, match="could not be reached") as caught:
        ConfluenceConnector(config).list_pages(known={}, cursor={})
    assert TOKEN not in str(caught.value)


def test_a_private_address_is_refused_unless_allowed(wiki):
    tree(wiki)
    with pytest.raises(SourceError, match="loopback"):
        connect(wiki, limits=Limits()).list_pages(known={}, cursor={})
    assert not wiki.requests


def test_a_space_is_required_and_must_exist(wiki):
    with pytest.raises(SourceError, match="space"):
        ConfluenceConnector(SourceConfig(kind="confluence", location=wiki.url, limits=LOCAL))
    with pytest.raises(SourceError, match="space 'NOPE'"):
        connect(wiki, space="NOPE").list_pages(known={}, cursor={})


def test_a_page_whose_body_fails_raises_from_fetch(wiki):
    ids = tree(wiki)
    connector = connect(wiki)
    pages = {page.title: page for page in connector.list_pages(known={}, cursor={}).pages}
    wiki.delete(ids["other"])
    with pytest.raises(SourceError, match="Other"):
        connector.fetch(pages["Other"])
    wiki.fail[f"/rest/api/content/{ids['home']}"] = 500
    with pytest.raises(SourceError, match="HTTP 500"):
        connector.fetch(pages["Home"])
    assert connector.fetch(pages["Install"]).startswith(b"<html>")


def test_attachments_are_listed_under_their_page_when_asked(wiki):
    ids = tree(wiki)
    wiki.attach(ids["install"], "setup guide.pdf", b"%PDF-1.4 setup")
    wiki.attach(ids["install"], "NOTES.MD", b"# Notes", "text/markdown")
    wiki.attach(ids["install"], "screenshot.png", b"\x89PNG", "image/png")
    assert "Home/Guides/Install/setup guide.pdf" not in listed(connect(wiki))

    connector = connect(wiki, attachments=True)
    listing = connector.list_pages(known={}, cursor={})
    pages = {page.path: page for page in listing.pages}
    assert "Home/Guides/Install/setup guide.pdf" in pages and "Home/Guides/Install/NOTES.md" in pages
    assert not any(path.endswith(".png") for path in pages)
    pdf = pages["Home/Guides/Install/setup guide.pdf"]
    assert pdf.ref == "1" and pdf.url.startswith(f"{wiki.url}/download/attachments/{ids['install']}/")

    wiki.requests.clear()
    assert connector.fetch(pdf) == b"%PDF-1.4 setup"
    download = [seen for seen in wiki.requests if "/download/attachments/" in seen.path]
    assert download and download[0].headers.get("Authorization", "").startswith("Basic ")

    wiki.pages[ids["install"]].attachments[0].version = 2
    assert listed(connector)["Home/Guides/Install/setup guide.pdf"] == "2"


def test_links_written_against_another_base_url_are_followed_on_the_configured_address():
    public = "https://confluence.corp.example/confluence"
    with ConfluenceStandin(username=USER, token=TOKEN, public_url=public) as wiki:
        ids = tree(wiki)
        wiki.attach(ids["home"], "guide.pdf", b"%PDF-1.4 guide")
        connector = connect(wiki, attachments=True)
        pages = {page.path: page for page in connector.list_pages(known={}, cursor={}).pages}
        assert len(pages) == 5  # every result page was read, on the stand-in's address
        assert pages["Home/Guides/Install.html"].url == f"{public}/display/KB/Install"  # citations: the public URL
        assert pages["Home/guide.pdf"].url.startswith(f"{public}/download/attachments/")
        assert connector.fetch(pages["Home/guide.pdf"]) == b"%PDF-1.4 guide"


def test_cloud_is_recognised_and_read_through_rest_v1():
    with ConfluenceStandin(username=USER, token=TOKEN, context="/wiki") as wiki:
        wiki.add("Home")
        assert listed(connect(wiki, cloud=True)) == {"Home.html": "1"}
    cloud = ConfluenceConnector(
        SourceConfig(kind="confluence", location="https://example.atlassian.net/wiki", options={"space": "KB"})
    )
    assert cloud.cloud
    assert not ConfluenceConnector(
        SourceConfig(kind="confluence", location="https://wiki.corp", options={"space": "KB"})
    ).cloud


def test_the_page_budget_marks_the_listing_incomplete(wiki):
    for number in range(5):
        wiki.add(f"Page {number}")
    limits = Limits(allowed_hosts=frozenset({"127.0.0.1"}), max_pages=3)
    listing = connect(wiki, limits=limits).list_pages(known={}, cursor={})
    assert len(listing.pages) == 3
    assert not listing.complete and listing.failures
