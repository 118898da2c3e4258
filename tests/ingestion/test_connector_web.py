"""The web source (ingestion/connectors/web.py): a small site served on 127.0.0.1 is crawled."""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime

import pytest

from ingestion.connectors import open_connector
from ingestion.connectors import web as web_module
from ingestion.connectors.base import Limits, Page, SourceConfig, SourceError
from ingestion.connectors.net import RefusedAddress
from ingestion.connectors.web import WebConnector, normalise_url, url_to_path
from tests.site_standin import Site

LOCAL = frozenset({"127.0.0.1"})

PDF = b"%PDF-1.4\n% a tiny stand-in\n"


def html(title: str, *links: str, head: str = "") -> str:
    anchors = "".join(f'<a href="{link}">{link}</a>\n' for link in links)
    return f"<html><head><title>{title}</title>{head}</head><body><p>{title}</p>{anchors}</body></html>"


def make(
    site: Site,
    start: str = "/",
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    options: dict | None = None,
    credentials: dict | None = None,
    **limits,
) -> WebConnector:
    config = SourceConfig(
        kind="web",
        location=site.url + start,
        include=include,
        exclude=exclude,
        options=options or {},
        credentials=credentials or {},
        limits=Limits(allowed_hosts=LOCAL, **limits),
    )
    connector = open_connector(config)
    assert isinstance(connector, WebConnector)
    return connector


def crawl(connector: WebConnector):
    try:
        return connector.list_pages(known={}, cursor={})
    finally:
        connector.close()


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> list[float]:
    """A clock that only moves when the crawler sleeps; returns the sleeps, in seconds."""
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(web_module, "_clock", lambda: now[0])
    monkeypatch.setattr(web_module, "_sleep", sleep)
    return sleeps


@pytest.fixture
def handbook(site: Site) -> Site:
    """Home → handbook index, vacation (with #fragment), a query page, a PDF; and things to skip."""
    site.add(
        "/",
        html(
            "Home",
            "/handbook/",
            "handbook/vacation#top",
            "/files/policy.pdf",
            "/notes.md",
            "mailto:hr@corp.example",
            "javascript:void(0)",
            "tel:+1555",
            "/style.css",
            "/logo.png",
        ),
    )
    site.add("/handbook/", html("Handbook", "vacation", "../", "sick?b=2&a=1", "/handbook/vacation"))
    site.add(
        "/handbook/vacation",
        html("Vacation  policy"),
        headers={"Last-Modified": "Tue, 03 Jun 2025 10:15:00 GMT"},
    )
    site.add("/handbook/sick?a=1&b=2", html("Sick leave"))
    site.add("/files/policy.pdf", PDF, content_type="application/pdf")
    site.add("/notes.md", "# Notes\n", content_type="text/plain; charset=utf-8")
    return site


def test_a_site_is_crawled_into_pages(handbook):
    connector = make(handbook)
    listing = connector.list_pages(known={}, cursor={})
    try:
        pages = {page.path: page for page in listing.pages}
        query_hash = hashlib.sha256(b"a=1&b=2").hexdigest()[:8]
        assert list(pages) == [
            "index.html",
            "handbook/index.html",
            "handbook/vacation.html",
            "files/policy.pdf",
            "notes.md",
            f"handbook/sick-{query_hash}.html",
        ]
        assert listing.complete is True
        assert listing.failures == []
        vacation = pages["handbook/vacation.html"]
        assert vacation.title == "Vacation policy"
        assert vacation.url == f"{handbook.url}/handbook/vacation"
        assert vacation.modified == datetime(2025, 6, 3, 10, 15, tzinfo=UTC)
        assert pages["index.html"].title == "Home"
        assert pages["index.html"].modified is None
        assert pages["files/policy.pdf"].title == ""
        assert pages["files/policy.pdf"].ref == hashlib.sha256(PDF).hexdigest()
        # Each page was fetched once (fragments and query order do not make new pages), nothing else.
        assert sorted(handbook.paths()) == sorted(
            [
                "/robots.txt",
                "/",
                "/handbook/",
                "/handbook/vacation",
                "/files/policy.pdf",
                "/notes.md",
                "/handbook/sick?a=1&b=2",
            ]
        )
        # The bodies come from the crawl, without asking the site again.
        before = len(handbook.requests)
        assert connector.fetch(pages["files/policy.pdf"]) == PDF
        assert b"Vacation" in connector.fetch(vacation)
        assert len(handbook.requests) == before
    finally:
        connector.close()


def test_open_connector_picks_the_web_connector(handbook):
    assert isinstance(make(handbook), WebConnector)


def test_only_the_start_urls_scheme_host_and_port_are_crawled(site):
    other = Site()
    try:
        other.add("/elsewhere", html("Elsewhere"))
        site.add(
            "/",
            html("Home", f"http://127.0.0.1:{other.port}/elsewhere", f"http://localhost:{site.port}/alias", "/same"),
        )
        site.add("/same", html("Same"))
        site.add("/alias", html("Alias"))
        listing = crawl(make(site))
        assert [page.path for page in listing.pages] == ["index.html", "same.html"]
        assert other.requests == []
        assert "/alias" not in site.paths()
    finally:
        other.close()


def test_a_prefix_limits_the_pages(handbook):
    listing = crawl(make(handbook, options={"prefix": "/handbook/"}))
    assert [page.path for page in listing.pages][:2] == ["handbook/index.html", "handbook/vacation.html"]
    assert all(page.path.startswith("handbook/") for page in listing.pages)
    assert "/" in handbook.paths()  # the start page is read for its links, not listed
    assert "/files/policy.pdf" not in handbook.paths()


def test_robots_txt_is_honoured(handbook):
    handbook.add(
        "/robots.txt",
        "User-agent: *\nDisallow: /files/\n\nUser-agent: kb\nDisallow: /handbook/vacation\n",
        content_type="text/plain",
    )
    listing = crawl(make(handbook))
    paths = [page.path for page in listing.pages]
    assert "handbook/vacation.html" not in paths
    assert "/handbook/vacation" not in handbook.paths()
    assert listing.complete is True


def test_robots_txt_forbidding_the_start_url_is_an_error(handbook):
    handbook.add("/robots.txt", "User-agent: *\nDisallow: /\n", content_type="text/plain")
    with pytest.raises(SourceError, match="robots.txt of the site forbids reading"):
        crawl(make(handbook))
    assert handbook.paths() == ["/robots.txt"]


def test_a_failing_robots_txt_stops_the_crawl(handbook):
    handbook.add("/robots.txt", "oops", status=503, content_type="text/plain")
    with pytest.raises(SourceError, match="HTTP 503"):
        crawl(make(handbook))
    assert handbook.paths() == ["/robots.txt"]


def test_requests_are_spaced_by_the_delay(handbook, clock):
    crawl(make(handbook, delay=0.5))
    assert clock == [0.5] * (len(handbook.requests) - 1)


def test_a_longer_crawl_delay_in_robots_txt_wins(handbook, clock):
    handbook.add("/robots.txt", "User-agent: *\nCrawl-delay: 2\n", content_type="text/plain")
    crawl(make(handbook, delay=0.5))
    assert clock == [2.0] * (len(handbook.requests) - 1)
    clock.clear()
    handbook.requests.clear()
    crawl(make(handbook, delay=3))  # ... but never a shorter one
    assert clock == [3.0] * (len(handbook.requests) - 1)


def test_the_page_budget_leaves_the_listing_incomplete(handbook):
    listing = crawl(make(handbook, max_pages=2))
    assert [page.path for page in listing.pages] == ["index.html", "handbook/index.html"]
    assert listing.complete is False
    assert len(handbook.requests) == 3  # robots.txt and two pages

    handbook.requests.clear()
    exact = crawl(make(handbook, max_pages=6))  # the budget reached as the site ends: complete
    assert len(exact.pages) == 6
    assert exact.complete is True


def test_a_missing_page_is_a_failure_and_the_crawl_goes_on(site):
    site.add("/", html("Home", "/missing", "/present"))
    site.add("/present", html("Present"))
    listing = crawl(make(site))
    assert [page.path for page in listing.pages] == ["index.html", "present.html"]
    assert listing.failures == [(f"{site.url}/missing", f"HTTP 404 Not Found from {site.url}/missing")]
    assert listing.complete is False  # so kb removes nothing that only failed this time


def test_a_too_large_page_is_a_failure(site):
    site.add("/", html("Home", "/big.pdf"))
    site.add("/big.pdf", b"x" * 5000, content_type="application/pdf")
    listing = crawl(make(site, max_bytes=2000))
    assert [page.path for page in listing.pages] == ["index.html"]
    assert listing.failures == [(f"{site.url}/big.pdf", f"{site.url}/big.pdf is larger than the 2 KB limit.")]
    assert listing.complete is False


def test_an_unreachable_start_url_is_a_source_error(site):
    connector = make(site)
    site.close()  # nothing listens there any more
    with pytest.raises(SourceError, match="Cannot connect to"):
        crawl(connector)


def test_a_missing_start_page_is_a_source_error(site):
    with pytest.raises(SourceError, match="Cannot read the start page: HTTP 404"):
        crawl(make(site, "/nothing-here"))


def test_a_private_start_url_is_refused_up_front(site, no_connect):
    with pytest.raises(RefusedAddress):
        WebConnector(SourceConfig(kind="web", location=site.url + "/"))  # 127.0.0.1 not allowed
    with pytest.raises(RefusedAddress, match="cloud metadata"):
        WebConnector(SourceConfig(kind="web", location="http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(SourceError, match="not an http or https address"):
        WebConnector(SourceConfig(kind="web", location="file:///etc/passwd"))
    assert site.requests == []


def test_redirects_within_the_site_are_followed_and_others_are_not_part_of_it(site):
    other = Site()
    try:
        site.add("/", html("Home", "/old", "/away", "/metadata"))
        site.redirect("/old", "/new", status=301)
        site.add("/new", html("New"))
        site.redirect("/away", f"http://127.0.0.1:{other.port}/")
        site.redirect("/metadata", "http://169.254.169.254/latest/meta-data/")
        listing = crawl(make(site))
        assert [(page.path, page.url) for page in listing.pages] == [
            ("index.html", f"{site.url}/"),
            ("new.html", f"{site.url}/new"),
        ]
        assert listing.failures == []
        assert other.requests == []
    finally:
        other.close()


def test_a_start_url_redirecting_off_the_site_is_an_error(site):
    site.redirect("/", "https://intranet.example/")
    with pytest.raises(SourceError, match="redirects to https://intranet.example/, outside the site"):
        crawl(make(site))


def test_a_sitemap_lists_the_pages(site):
    site.add(
        "/sitemap.xml",
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{site.url}/sitemap-a.xml</loc></sitemap>"
        f"<sitemap><loc>{site.url}/sitemap-b.xml.gz</loc></sitemap></sitemapindex>",
        content_type="application/xml",
    )
    site.add(
        "/sitemap-a.xml",
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{site.url}/guide/intro?x=1&amp;y=2</loc></url>"
        f"<url><loc>{site.url}/guide/setup</loc><lastmod>2025-01-01</lastmod></url>"
        "<url><loc>http://elsewhere.example/page</loc></url></urlset>",
        content_type="application/xml",
    )
    site.add(
        "/sitemap-b.xml.gz",
        gzip.compress(f"<urlset><url><loc><![CDATA[{site.url}/faq.pdf]]></loc></url></urlset>".encode()),
        content_type="application/gzip",
    )
    site.add("/guide/intro?x=1&y=2", html("Intro", "/not-in-sitemap"))
    site.add("/guide/setup", html("Setup"))
    site.add("/faq.pdf", PDF, content_type="application/pdf")
    listing = crawl(make(site, options={"sitemap": "/sitemap.xml"}))
    assert [page.url for page in listing.pages] == [
        f"{site.url}/guide/intro?x=1&y=2",
        f"{site.url}/guide/setup",
        f"{site.url}/faq.pdf",
    ]
    assert listing.complete is True
    assert "/not-in-sitemap" not in site.paths()  # with a sitemap, links are not followed


def test_a_missing_sitemap_is_a_source_error(site):
    site.add("/", html("Home"))
    with pytest.raises(SourceError, match="Cannot read the sitemap: HTTP 404"):
        crawl(make(site, options={"sitemap": f"{site.url}/sitemap.xml"}))


def test_excluded_pages_are_crawled_for_links_but_not_listed(handbook):
    listing = crawl(make(handbook, exclude=("index.html", "*.pdf")))
    paths = [page.path for page in listing.pages]
    assert "index.html" not in paths and "files/policy.pdf" not in paths
    assert "handbook/vacation.html" in paths
    included = crawl(make(handbook, include=("handbook/*",)))
    assert all(page.path.startswith("handbook/") for page in included.pages)


def test_noindex_and_nofollow_are_honoured(site):
    site.add("/", html("Home", "/hidden", "/open"))
    site.add("/hidden", html("Hidden", "/behind-hidden", head='<meta name="robots" content="noindex">'))
    site.add("/open", html("Open", "/not-followed", head='<meta name="robots" content="nofollow">'))
    site.add("/behind-hidden", html("Behind"))
    listing = crawl(make(site))
    assert [page.path for page in listing.pages] == ["index.html", "open.html", "behind-hidden.html"]
    assert "/not-followed" not in site.paths()


def test_two_urls_with_one_path_get_distinct_paths(site):
    site.add("/", html("Home", "/a", "/a.html"))
    site.add("/a", html("A"))
    site.add("/a.html", html("A too"))
    paths = [page.path for page in crawl(make(site)).pages]
    digest = hashlib.sha256(f"{site.url}/a.html".encode()).hexdigest()[:8]
    assert paths == ["index.html", "a.html", f"a-{digest}.html"]


def test_fetch_reads_a_page_the_listing_did_not_keep(site):
    site.add("/doc.txt", "plain text", content_type="text/plain")
    connector = make(site)
    try:
        assert connector.fetch(Page(path="doc.txt", ref="x", url=f"{site.url}/doc.txt")) == b"plain text"
        with pytest.raises(SourceError, match="not part of the site"):
            connector.fetch(Page(path="x.html", ref="x", url="http://10.0.0.1/x"))
    finally:
        connector.close()


def test_credentials_are_sent_to_the_site(site):
    site.add("/", html("Home"))
    crawl(make(site, credentials={"username": "svc", "token": "t0ken"}))
    assert all(headers["Authorization"].startswith("Basic ") for _, headers in site.requests)
    assert site.requests[0][1]["User-Agent"].startswith("kb")


@pytest.mark.parametrize(
    ("url", "suffix", "path"),
    [
        ("https://intranet.corp/handbook/vacation", ".html", "handbook/vacation.html"),
        ("https://intranet.corp/", ".html", "index.html"),
        ("https://intranet.corp/a/", ".html", "a/index.html"),
        ("https://intranet.corp/a/page.html", ".html", "a/page.html"),
        ("https://intranet.corp/a/page.htm", ".html", "a/page.html"),
        ("https://intranet.corp/wiki/index.php", ".html", "wiki/index.php.html"),
        ("https://intranet.corp/files/report.pdf", ".pdf", "files/report.pdf"),
        ("https://intranet.corp/v1.2/notes", ".html", "v1.2/notes.html"),
        ("https://intranet.corp/caf%C3%A9/men%C3%BC", ".html", "café/menü.html"),
        ("https://intranet.corp/a/%2E%2E/%2e%2e/etc/passwd", ".html", "a/etc/passwd.html"),
        ("https://intranet.corp/a%2Fb%5Cc", ".html", "a_b_c.html"),
        (
            "https://intranet.corp/search?q=x",
            ".html",
            f"search-{hashlib.sha256(b'q=x').hexdigest()[:8]}.html",
        ),
        (
            "https://intranet.corp/download?id=3",
            ".pdf",
            f"download-{hashlib.sha256(b'id=3').hexdigest()[:8]}.pdf",
        ),
    ],
)
def test_url_to_path(url, suffix, path):
    assert url_to_path(url, suffix) == path


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Intranet.Corp:80/a/./b/../c#frag", "http://intranet.corp/a/c"),
        ("https://intranet.corp:443", "https://intranet.corp/"),
        ("https://u:p@intranet.corp:8443/x?b=2&a=1&", "https://intranet.corp:8443/x?a=1&b=2"),
        ("https://intranet.corp/a b", "https://intranet.corp/a%20b"),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
        ("mailto:someone@corp.example", None),
        ("javascript:alert(1)", None),
        ("ftp://files.corp/x", None),
        ("http:///nohost", None),
    ],
)
def test_normalise_url(url, normal):
    assert normalise_url(url) == normal


# --- later runs: conditional requests ------------------------------------------------------------

MODIFIED = "Tue, 03 Jun 2025 10:15:00 GMT"


@pytest.fixture
def tagged(site: Site) -> Site:
    """Home → /a → /deep (only reachable through /a), /b without validators, a PDF; ETags on most."""
    site.add("/", html("Home", "/a", "/b", "/files/x.pdf"), headers={"ETag": '"home1"'})
    site.add("/a", html("A", "/deep"), headers={"ETag": '"a1"', "Last-Modified": MODIFIED})
    site.add("/deep", html("Deep"), headers={"ETag": 'W/"deep1"'})
    site.add("/b", html("B"))
    site.add("/files/x.pdf", PDF, content_type="application/pdf", headers={"ETag": '"pdf1"'})
    return site


def listed(listing) -> dict[str, Page]:
    return {page.path: page for page in listing.pages}


def first_run(site: Site):
    listing = crawl(make(site))
    site.requests.clear()
    site.answers.clear()
    return listed(listing), listing.cursor


def conditions(site: Site, path: str) -> dict[str, str]:
    [headers] = [headers for where, headers in site.requests if where == path]
    return {name: value for name, value in headers.items() if name.startswith("If-")}


def test_the_cursor_keeps_validators_refs_and_links(tagged):
    pages, cursor = first_run(tagged)
    records = cursor["pages"]
    assert set(records) == {f"{tagged.url}{path}" for path in ("/", "/a", "/deep", "/files/x.pdf")}  # /b: no validators
    a = records[f"{tagged.url}/a"]
    assert a == {
        "etag": '"a1"',
        "last_modified": MODIFIED,
        "ref": pages["a.html"].ref,
        "path": "a.html",
        "title": "A",
        "url": f"{tagged.url}/a",
        "modified": "2025-06-03T10:15:00+00:00",
        "kind": ".html",
        "links": [f"{tagged.url}/deep"],
    }
    assert records[f"{tagged.url}/files/x.pdf"]["links"] == []
    assert records[f"{tagged.url}/files/x.pdf"]["kind"] == ".pdf"


def test_unchanged_pages_answer_304_and_are_listed_from_the_cursor(tagged):
    pages, cursor = first_run(tagged)
    connector = make(tagged)
    try:
        listing = connector.list_pages(known={path: page.ref for path, page in pages.items()}, cursor=cursor)
        again = listed(listing)
        assert again == pages  # same paths, refs, titles, URLs and times; /deep still found through /a
        assert listing.complete is True
        assert listing.cursor["pages"] == cursor["pages"]
        assert dict(tagged.answers) == {
            "/robots.txt": 404,
            "/": 304,
            "/a": 304,
            "/deep": 304,
            "/b": 200,
            "/files/x.pdf": 304,
        }
        assert conditions(tagged, "/a") == {"If-None-Match": '"a1"', "If-Modified-Since": MODIFIED}
        assert conditions(tagged, "/deep") == {"If-None-Match": 'W/"deep1"'}
        assert conditions(tagged, "/b") == {}
        # No body was kept for a 304 page: fetch() downloads it again, unconditionally.
        assert connector.fetch(again["a.html"]) == html("A", "/deep").encode()
        assert tagged.answers[-1] == ("/a", 200)
        assert not [name for name in tagged.requests[-1][1] if name.startswith("If-")]
    finally:
        connector.close()


def test_a_changed_page_is_downloaded_with_a_new_ref(tagged):
    pages, cursor = first_run(tagged)
    tagged.add("/a", html("A changed", "/deep"), headers={"ETag": '"a2"'})
    connector = make(tagged)
    try:
        listing = connector.list_pages(known={path: page.ref for path, page in pages.items()}, cursor=cursor)
        again = listed(listing)
        assert again["a.html"].ref == hashlib.sha256(html("A changed", "/deep").encode()).hexdigest()
        assert again["a.html"].ref != pages["a.html"].ref
        assert again["a.html"].title == "A changed"
        assert again["deep.html"] == pages["deep.html"]
        assert ("/a", 200) in tagged.answers and ("/deep", 304) in tagged.answers
        assert listing.cursor["pages"][f"{tagged.url}/a"]["etag"] == '"a2"'
        assert listing.cursor["pages"][f"{tagged.url}/a"]["last_modified"] == ""
        before = len(tagged.requests)
        assert connector.fetch(again["a.html"]) == html("A changed", "/deep").encode()  # kept from the listing
        assert len(tagged.requests) == before
    finally:
        connector.close()


def test_no_conditional_request_when_kb_lacks_the_pages_ref(tagged):
    pages, cursor = first_run(tagged)
    known = {path: page.ref for path, page in pages.items() if path != "a.html"}
    known["deep.html"] = "an older ref"  # kb holds another version (its document failed, say)
    listing = crawl_with(tagged, known, cursor)
    assert listed(listing) == pages
    assert conditions(tagged, "/a") == {} and conditions(tagged, "/deep") == {}
    assert conditions(tagged, "/") == {"If-None-Match": '"home1"'}
    assert dict(tagged.answers)["/a"] == 200 and dict(tagged.answers)["/deep"] == 200
    # Without kb's refs (a first sync, kb lost everything) no request is conditional.
    tagged.requests.clear()
    listing = crawl_with(tagged, {}, cursor)
    assert listed(listing) == pages
    assert all(not conditions(tagged, path) for path in ("/", "/a", "/deep", "/files/x.pdf"))


def test_last_modified_alone_gives_if_modified_since(site):
    site.add("/", html("Home", "/old"), headers={"Last-Modified": MODIFIED})
    site.add("/old", "old notes", content_type="text/plain", headers={"Last-Modified": MODIFIED})
    pages, cursor = first_run(site)
    listing = crawl_with(site, {path: page.ref for path, page in pages.items()}, cursor)
    assert listed(listing) == pages
    assert pages["old.txt"].modified == datetime(2025, 6, 3, 10, 15, tzinfo=UTC)
    assert conditions(site, "/") == {"If-Modified-Since": MODIFIED}
    assert conditions(site, "/old") == {"If-Modified-Since": MODIFIED}
    assert dict(site.answers) == {"/robots.txt": 404, "/": 304, "/old": 304}


def test_a_failing_page_leaves_the_cursor_and_a_304_to_a_plain_request_is_a_failure(tagged):
    pages, cursor = first_run(tagged)
    tagged.add("/a", "gone", status=404, content_type="text/plain")
    tagged.add("/b", b"", status=304)
    listing = crawl_with(tagged, {path: page.ref for path, page in pages.items()}, cursor)
    assert [where for where, _ in listing.failures] == [f"{tagged.url}/a", f"{tagged.url}/b"]
    assert "304" in listing.failures[1][1]
    assert listing.complete is False
    assert f"{tagged.url}/a" not in listing.cursor["pages"]
    assert "deep.html" not in listed(listing)  # only reachable through the failed page


def crawl_with(site: Site, known: dict[str, str], cursor: dict):
    connector = make(site)
    try:
        return connector.list_pages(known=known, cursor=cursor)
    finally:
        connector.close()
