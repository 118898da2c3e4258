"""The MediaWiki connector against a stand-in Action API (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingestion.connectors import Limits, SourceConfig, SourceError, open_connector
from ingestion.connectors.mediawiki import MediaWikiConnector
from tests.mediawiki_standin import MediaWikiStandin

BOT = "Kb@sync"
PASSWORD = "bot-password-s3cret-0123456789"
LOCAL = Limits(allowed_hosts=frozenset({"127.0.0.1"}))


@pytest.fixture
def wiki():
    with MediaWikiStandin(users={BOT: PASSWORD}) as standin:
        standin.add("Main Page", "<p>Welcome to the wiki.</p>")
        standin.add("Install guide", "<p>Run the installer.</p>")
        standin.add("Install guide/Linux", "<p>apt install kb</p>")
        standin.add("Help:Editing", "<p>How to edit.</p>")
        standin.add("Help:Editing/Tables", "<p>Tables.</p>")
        yield standin


def connect(
    wiki: MediaWikiStandin, *, credentials=None, limits=LOCAL, include=(), exclude=(), **options
) -> MediaWikiConnector:
    config = SourceConfig(
        kind="mediawiki",
        location=wiki.url,
        options=options,
        credentials=credentials or {},
        limits=limits,
        include=include,
        exclude=exclude,
    )
    return open_connector(config)  # type: ignore[return-value]


def listed(connector: MediaWikiConnector) -> dict[str, str]:
    listing = connector.list_pages(known={}, cursor={})
    assert listing.complete, listing.failures
    return {page.path: page.ref for page in listing.pages}


def allpages_requests(wiki: MediaWikiStandin) -> list[dict[str, str]]:
    return [seen.params for seen in wiki.requests if seen.params.get("generator") == "allpages"]


def test_first_listing_has_paths_revisions_urls_and_times(wiki):
    listing = connect(wiki).list_pages(known={}, cursor={})

    pages = {page.path: page for page in listing.pages}
    assert sorted(pages) == ["Install guide.html", "Install guide/Linux.html", "Main Page.html"]
    linux = pages["Install guide/Linux.html"]
    revision = wiki.pages["Install guide/Linux"].revisions[-1]
    assert linux.ref == str(revision.revid)
    assert linux.title == "Install guide/Linux"
    assert linux.url == f"{wiki.origin}/wiki/Install_guide/Linux"
    assert linux.modified == datetime.fromisoformat(revision.timestamp) and linux.modified.tzinfo == UTC
    newest = max(p.revisions[-1].timestamp for p in wiki.pages.values() if p.ns == 0)
    assert listing.cursor == {"rc_timestamp": newest}
    assert listing.complete and not listing.failures


def test_namespaces_become_folders(wiki):
    paths = listed(connect(wiki, namespaces=[0, 12]))
    assert "Help/Editing.html" in paths and "Help/Editing/Tables.html" in paths
    assert "Main Page.html" in paths
    assert sorted(listed(connect(wiki, namespaces=[12]))) == ["Help/Editing.html", "Help/Editing/Tables.html"]
    with pytest.raises(SourceError, match="gapnamespace"):
        connect(wiki, namespaces=[3000]).list_pages(known={}, cursor={})
    with pytest.raises(SourceError, match="namespace"):
        connect(wiki, namespaces=["main"])
    assert connect(wiki, namespaces="0, 12").namespaces == [0, 12]


def test_fetch_returns_the_rendered_revision_as_html(wiki):
    wiki.add("Q&A <faq>", "<p>Grüße</p>")
    connector = connect(wiki)
    pages = {page.title: page for page in connector.list_pages(known={}, cursor={}).pages}

    body = connector.fetch(pages["Main Page"]).decode("utf-8")
    assert body == (
        '<html><head><meta charset="utf-8"><title>Main Page</title></head><body><h1>Main Page</h1>'
        '<div class="mw-content-ltr mw-parser-output" lang="en" dir="ltr"><p>Welcome to the wiki.</p></div>'
        "</body></html>"
    )
    faq = connector.fetch(pages["Q&A <faq>"]).decode("utf-8")
    assert "<title>Q&amp;A &lt;faq&gt;</title>" in faq and "<p>Grüße</p>" in faq
    assert pages["Q&A <faq>"].url == f"{wiki.origin}/wiki/Q%26A_%3Cfaq%3E"
    parse = [seen.params for seen in wiki.requests if seen.params.get("action") == "parse"]
    assert parse[0]["oldid"] == pages["Main Page"].ref and parse[0]["formatversion"] == "2"


def test_an_edit_changes_only_that_pages_ref(wiki):
    connector = connect(wiki)
    before = listed(connector)
    wiki.edit("Install guide", "<p>Run the new installer.</p>")
    after = listed(connector)

    assert after.keys() == before.keys()
    assert {path for path in after if after[path] != before[path]} == {"Install guide.html"}
    page = next(p for p in connector.list_pages(known={}, cursor={}).pages if p.title == "Install guide")
    assert b"new installer" in connector.fetch(page)


def test_a_deleted_page_leaves_the_listing(wiki):
    connector = connect(wiki)
    listed(connector)
    wiki.delete("Install guide/Linux")
    assert "Install guide/Linux.html" not in listed(connector)


def test_a_moved_page_appears_under_its_new_title_and_its_redirect_is_skipped(wiki):
    connector = connect(wiki)
    listed(connector)
    wiki.move("Install guide", "Installation")
    after = listed(connector)
    assert "Install guide.html" not in after  # the redirect left behind is no page of its own
    assert after["Installation.html"] == str(wiki.pages["Installation"].revisions[-1].revid)
    assert all(seen.get("gapfilterredir") == "nonredirects" for seen in allpages_requests(wiki))


def test_pagination_continues_past_the_page_size(wiki):
    for number in range(6):
        wiki.add(f"Page {number}")
    assert len(listed(connect(wiki))) == 9
    requests = allpages_requests(wiki)
    assert len(requests) == 5  # two titles an answer
    assert [r.get("gapcontinue") for r in requests] == [None, "Main_Page", "Page_1", "Page_3", "Page_5"]


def test_include_and_exclude_globs_filter_paths(wiki):
    connector = connect(wiki, namespaces=[0, 12], include=("Help/*", "Install*"), exclude=("*/Tables.html",))
    assert sorted(listed(connector)) == ["Help/Editing.html", "Install guide.html", "Install guide/Linux.html"]


def test_a_bot_password_logs_in_and_reads_a_private_wiki():
    with MediaWikiStandin(users={BOT: PASSWORD}, private=True) as wiki:
        wiki.add("Main Page")
        with pytest.raises(SourceError, match="only logged-in users"):
            connect(wiki).list_pages(known={}, cursor={})

        wiki.requests.clear()
        connector = connect(wiki, credentials={"username": BOT, "password": PASSWORD})
        pages = connector.list_pages(known={}, cursor={}).pages
        assert [page.path for page in pages] == ["Main Page.html"]
        assert connector.fetch(pages[0]).startswith(b"<html>")

        actions = [(seen.method, seen.params.get("action"), seen.params.get("meta")) for seen in wiki.requests]
        assert ("GET", "query", "tokens") in actions
        login = [seen for seen in wiki.requests if seen.params.get("action") == "login"]
        assert len(login) == 1 and login[0].method == "POST"
        assert login[0].params["lgname"] == BOT and login[0].params["lgpassword"] == PASSWORD
        # The password travels in the POST body only: never in a URL a proxy or log could keep.
        assert all(PASSWORD not in seen.path for seen in wiki.requests)
        assert all(seen.headers.get("User-Agent", "").startswith("kb") for seen in wiki.requests)


def test_a_wrong_password_is_a_source_error_without_the_password(wiki):
    wrong = "wrong-password-that-must-not-leak"
    with pytest.raises(SourceError) as caught:
        connect(wiki, credentials={"username": BOT, "password": wrong}).list_pages(known={}, cursor={})
    assert "refused the login" in str(caught.value)
    assert wrong not in str(caught.value) and PASSWORD not in str(caught.value)
    with pytest.raises(SourceError, match="both"):
        connect(wiki, credentials={"username": BOT}).list_pages(known={}, cursor={})


def test_an_unreachable_wiki_is_a_source_error():
    with MediaWikiStandin() as wiki:
        url = wiki.url
    credentials = {"username": BOT, "password": PASSWORD}
    connector = MediaWikiConnector(SourceConfig(kind="mediawiki", location=url, credentials=credentials, limits=LOCAL))
    with pytest.raises(SourceError, match="could not be reached") as caught:
        connector.list_pages(known={}, cursor={})
    assert PASSWORD not in str(caught.value)


def test_a_private_address_is_refused_unless_allowed(wiki):
    wiki.requests.clear()
    with pytest.raises(SourceError, match="loopback"):
        connect(wiki, limits=Limits()).list_pages(known={}, cursor={})
    assert not wiki.requests


def test_a_wrong_script_path_is_a_source_error(wiki):
    config = SourceConfig(kind="mediawiki", location=f"{wiki.origin}/wiki/", limits=LOCAL)
    with pytest.raises(SourceError, match="HTTP 404"):
        MediaWikiConnector(config).list_pages(known={}, cursor={})


def test_a_page_gone_before_its_fetch_is_a_source_error(wiki):
    connector = connect(wiki)
    pages = {page.title: page for page in connector.list_pages(known={}, cursor={}).pages}
    wiki.delete("Main Page")
    with pytest.raises(SourceError, match="gone"):
        connector.fetch(pages["Main Page"])
    assert connector.fetch(pages["Install guide"]).startswith(b"<html>")


@pytest.mark.parametrize(
    ("location", "scheme", "host", "path"),
    [
        ("https://wiki.corp/w/", "https", "wiki.corp", "/w/"),
        ("https://wiki.corp", "https", "wiki.corp", "/w/"),
        ("https://wiki.corp/w/api.php", "https", "wiki.corp", "/w/"),
        ("http://wiki.corp:8080/mediawiki", "http", "wiki.corp:8080", "/mediawiki/"),
        ("https://wiki.corp/api.php", "https", "wiki.corp", "/"),
    ],
)
def test_the_location_names_the_script_path(location, scheme, host, path):
    connector = MediaWikiConnector(SourceConfig(kind="mediawiki", location=location))
    assert (connector.scheme, connector.host, connector.path) == (scheme, host, path)


def test_a_location_with_credentials_or_another_scheme_is_refused():
    with pytest.raises(SourceError, match="credentials"):
        MediaWikiConnector(SourceConfig(kind="mediawiki", location="https://bot:pw@wiki.corp/w/"))
    with pytest.raises(SourceError, match="http"):
        MediaWikiConnector(SourceConfig(kind="mediawiki", location="file:///etc/passwd"))
