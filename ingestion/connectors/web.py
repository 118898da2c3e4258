"""An intranet site as a source: crawled from a start URL, or read from its sitemap.

The site is the start URL's scheme, host and port; with the option "prefix" ("/handbook/")
only addresses whose path starts with it are fetched (the start URL is always fetched, for
its links) and listed. robots.txt is honoured for the user agent "kb", with its Crawl-delay
when longer than Limits.delay. HTML pages become .html pages; linked PDF, Word (.docx),
Markdown and plain-text files on the site become pages of their own.

Every request goes through net.guarded_session, and redirects are followed one hop at a time:
a redirect to another site (or a private address) ends there, it is not part of the site.
A crawl must download pages to find their links, so list_pages keeps the bodies of the pages
it lists in a temporary folder, and fetch() returns them without asking the site again.

Later runs skip unchanged pages: the cursor keeps, per listed URL that had an ETag or
Last-Modified, {"etag", "last_modified", "ref", "path", "title", "url", "modified", "kind",
"links"} (links: up to MAX_STORED_LINKS same-site links of an HTML page). When kb still holds
that ref for that path (known), the next run asks with If-None-Match / If-Modified-Since; a
304 lists the page from the record and follows its stored links, keeping no body (kb does not
fetch an unchanged ref; fetch() would download it again). A 200 replaces the record; a page
that fails or is no longer listed has none in the new cursor, so it is read in full next time.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
import warnings
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from html import unescape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from bs4 import BeautifulSoup
from protego import Protego
from requests.utils import requote_uri

from ingestion.connectors.base import Listing, Page, SourceConfig, SourceError, selected
from ingestion.connectors.net import (
    MAX_REDIRECTS,
    HTTPStatusError,
    check_url,
    fetch_bytes,
    guarded_session,
    redact_url,
    too_large,
)

__all__ = ["USER_AGENT", "WebConnector", "normalise_url", "url_to_path"]

USER_AGENT = "kb"
MAX_CRAWL_DELAY = 60.0  # a robots.txt asking for more would stall a sync for hours
MAX_SITEMAPS = 100  # sitemap files read from one sitemap index tree
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_STORED_LINKS = 2000  # links kept per page in the cursor, followed when the page answers 304

HTML_TYPES = {"text/html", "application/xhtml+xml"}
DOCUMENT_TYPES = {
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "text/plain": ".txt",
}
# Servers often send files as octet-stream (or nothing): then the URL's suffix decides.
SUFFIX_KINDS = {
    ".html": ".html",
    ".htm": ".html",
    ".pdf": ".pdf",
    ".docx": ".docx",
    ".md": ".md",
    ".markdown": ".md",
    ".txt": ".txt",
}
# Links to these are never fetched: kb cannot read them, and they are often large.
SKIPPED_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .svg .webp .ico .bmp .tif .tiff .css .js .mjs .map .json .xml .rss .atom .zip .gz"
    " .tgz .bz2 .xz .7z .rar .tar .exe .msi .dmg .iso .bin .img .mp3 .mp4 .m4a .m4v .avi .mov .mkv .webm .wav"
    " .ogg .flac .woff .woff2 .ttf .otf .eot .doc .xls .xlsx .ppt .pptx .odt .ods .odp .rtf .csv .apk .jar"
    " .war .deb .rpm .ics .vcf".split()
)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_LOC = re.compile(r"<(?:[\w-]+:)?loc>\s*(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?\s*</(?:[\w-]+:)?loc>", re.S | re.I)
_SITEMAP_INDEX = re.compile(r"<(?:[\w-]+:)?sitemapindex\b", re.I)


def _clock() -> float:
    return time.monotonic()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


# --- URLs and paths ----------------------------------------------------------------------------


def _remove_dot_segments(path: str) -> str:
    """The path without "." and ".." segments (RFC 3986, 5.2.4), always starting with "/"."""
    segments: list[str] = []
    parts = path.split("/")
    for segment in parts:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = "/" if segments and (parts[-1] in ("", ".", "..")) else ""
    return "/" + "/".join(segments) + trailing


def normalise_url(url: str) -> str | None:
    """The URL in one spelling (scheme and host lower case, no default port, fragment or
    user:password@, query parameters sorted); None when it is not an http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(requote_uri(parts.path))
    # Sorting the raw pairs (not decoding them) keeps every server's own query syntax intact.
    query = "&".join(sorted(pair for pair in requote_uri(parts.query).split("&") if pair))
    return urlunsplit((scheme, netloc, path, query, ""))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


def _suffix(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).suffix.lower()


def url_to_path(url: str, suffix: str) -> str:
    """The page path for a URL: `/handbook/vacation` → `handbook/vacation.html`, `/` →
    `index.html`, `/a/` → `a/index.html`; a query string adds a short hash to the name."""
    parts = urlsplit(url)
    segments = [_UNSAFE.sub("_", unquote(segment)).strip()[:150] for segment in parts.path.split("/")]
    segments = [segment for segment in segments if segment not in ("", ".", "..")]
    if parts.path.endswith("/") or not segments:
        segments.append("index")
    name = segments[-1]
    current = PurePosixPath(name).suffix.lower()
    if current == suffix or (suffix == ".html" and current in (".htm", ".xhtml", ".shtml")):
        name = name[: -len(current)] or "index"
    if parts.query:
        name += "-" + hashlib.sha256(parts.query.encode()).hexdigest()[:8]
    segments[-1] = name + suffix
    return "/".join(segments)


def _unique(path: str, url: str, taken: set[str]) -> str:
    """The path, or when another URL already has it (/a and /a.html), one with the URL's hash."""
    if path in taken:
        stem, dot, suffix = path.rpartition(".")
        path = f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}{dot}{suffix}"
    taken.add(path)
    return path


def _kind(content_type: str, url: str) -> str | None:
    """The suffix kb reads a response as (".html", ".pdf" ...), or None when it is no page."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    suffix = SUFFIX_KINDS.get(_suffix(url))
    if ctype in HTML_TYPES:
        return ".html"
    if ctype == "text/plain" and suffix == ".md":
        return ".md"
    if ctype in DOCUMENT_TYPES:
        return DOCUMENT_TYPES[ctype]
    if ctype in ("", "application/octet-stream", "binary/octet-stream"):
        return suffix
    return None


def _charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.I)
    return match.group(1) if match else None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _gunzip(body: bytes, limit: int, url: str) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise SourceError(f"{redact_url(url)} is not a valid gzip file.") from None
    if len(data) > limit:
        raise too_large(url, limit)
    return data


@dataclass
class _Response:
    url: str  # after redirects within the site
    body: bytes
    content_type: str
    modified: datetime | None
    etag: str = ""
    last_modified: str = ""
    unchanged: bool = False  # 304 Not Modified to a conditional request: no body


def _trusted(record: Any, known: Mapping[str, str]) -> dict[str, Any] | None:
    """A cursor record good for a conditional request: validators, and kb holds its ref."""
    if not isinstance(record, dict) or not (record.get("etag") or record.get("last_modified")):
        return None
    ok = record.get("kind") in SUFFIX_KINDS.values() and isinstance(record.get("url"), str)
    links = record.get("links")
    ok = ok and isinstance(links, list) and all(isinstance(link, str) for link in links)
    ok = ok and isinstance(record.get("title"), str)
    return record if ok and record.get("ref") and record.get("ref") == known.get(str(record.get("path"))) else None


def _iso(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass
class _HTML:
    title: str
    links: list[str]
    index: bool  # <meta name="robots" content="noindex"> says no
    follow: bool  # ... "nofollow" says no


class _LeftSite(SourceError):
    """A redirect leaves the site (another host, scheme or port, or a path robots.txt forbids)."""


def _read_html(body: bytes, content_type: str, url: str) -> _HTML:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bs4 warns on XHTML and odd markup; the page is still read
        soup = BeautifulSoup(body, "html.parser", from_encoding=_charset(content_type))
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    directives = {
        word
        for meta in soup.find_all("meta", attrs={"name": re.compile(r"^(robots|kb)$", re.I)})
        for word in re.split(r"[\s,]+", str(meta.get("content", "")).lower())
    }
    base_tag = soup.find("base", href=True)
    base = urljoin(url, str(base_tag["href"])) if base_tag else url
    links = []
    for anchor in soup.find_all(["a", "area"], href=True):
        link = normalise_url(urljoin(base, str(anchor["href"]).strip()))
        if link:
            links.append(link)
    return _HTML(
        title=title,
        links=links,
        index=not directives & {"noindex", "none"},
        follow=not directives & {"nofollow", "none"},
    )


class WebConnector:
    """A site crawled from config.location, or listed by config.options["sitemap"].

    Listing rules:
    - A page excluded by the include/exclude globs is still crawled for its links (an
      excluded index page must not hide the pages it links to), but not listed.
    - With a sitemap, its URLs (a sitemap index's too) are the pages; links are not followed.
    - The page budget Limits.max_pages counts page fetches; when pages are left unfetched
      the listing is incomplete.
    - A page that cannot be fetched (HTTP 404, too large, a refused address) goes to
      failures as (URL, reason) and the crawl goes on; the listing is then incomplete too, so
      kb removes nothing that merely failed this time. complete=True means every page found
      was read and no budget was hit.
    - The start URL (or the sitemap) failing, robots.txt forbidding the start URL or failing
      with a server error, raises SourceError: the site is unreadable, kb changes nothing.
    - A redirect off the site, or pages robots.txt forbids, are simply not part of the site.
    """

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.limits = config.limits
        start = normalise_url(config.location)
        if start is None:
            raise SourceError(f"The start URL {redact_url(config.location)!r} is not an http or https address.")
        check_url(start, self.limits)  # a refused start URL is refused now, not at the first sync
        self.start = start
        self.origin = _origin(start)
        prefix = str(config.options.get("prefix") or "")
        self.prefix = prefix if not prefix or prefix.startswith("/") else "/" + prefix
        sitemap = str(config.options.get("sitemap") or "")
        self.sitemap = normalise_url(urljoin(start, sitemap)) if sitemap else None
        if sitemap and self.sitemap is None:
            raise SourceError(f"The sitemap {redact_url(sitemap)!r} is not an http or https address.")
        self.session = guarded_session(self.limits)
        self.session.headers["User-Agent"] = f"{USER_AGENT} (knowledge base sync)"
        username = config.credentials.get("username", "")
        token = config.credentials.get("token", "")
        if username and token:
            self.session.auth = (username, token)
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.delay = self.limits.delay
        self._last_request: float | None = None
        self._robots: Protego | None = None
        self._folder: Path | None = None
        self._stored: dict[str, Path] = {}

    # --- the connector interface ---

    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        """Every page of the site now (see the class docstring for what counts)."""
        self._clear_store()
        listing = Listing()
        robots = self._load_robots()
        if not robots.can_fetch(self.start, USER_AGENT):
            raise SourceError(f"robots.txt of the site forbids reading {redact_url(self.start)}.")
        follow = self.sitemap is None
        queue = deque(self._sitemap_urls(listing) if self.sitemap else [self.start])
        seen = set(queue)
        read: set[str] = set()  # final URLs, so two addresses redirecting to one page list it once
        taken: set[str] = set()
        fetched = 0
        old = cursor.get("pages")
        old = old if isinstance(old, dict) else {}
        records: dict[str, dict[str, Any]] = {}
        while queue:
            url = queue.popleft()
            if not robots.can_fetch(url, USER_AGENT):
                continue
            if fetched >= self.limits.max_pages:
                listing.complete = False
                break
            fetched += 1
            record = _trusted(old.get(url), known)
            try:
                response = self._get(url, record)
            except _LeftSite as exc:
                if url == self.start and follow:
                    raise SourceError(f"{exc} Use the address it redirects to as the start URL.") from None
                continue
            except SourceError as exc:
                if url == self.start and follow:
                    raise SourceError(f"Cannot read the start page: {exc}") from None
                listing.failures.append((redact_url(url), str(exc)))
                continue
            if response.url in read:
                continue
            read.add(response.url)
            seen.add(response.url)
            if response.unchanged and record is not None:  # a 304 lists the page as recorded
                kind, title, index, links = record["kind"], record["title"], True, record["links"]
                ref, modified = str(record["ref"]), _iso(record.get("modified"))
            else:
                kind = _kind(response.content_type, response.url)
                if kind is None:
                    continue
                title, index, links = "", True, []
                if kind == ".html":
                    html = _read_html(response.body, response.content_type, response.url)
                    title, index, links = html.title, html.index, html.links if html.follow else []
                # The content's hash, not the ETag: ETags may be weak, differ between the servers
                # behind one name, or stay put when a template changes; the body is downloaded
                # anyway to find links, so hashing it costs nothing.
                ref, modified = hashlib.sha256(response.body).hexdigest(), response.modified
            for link in links if follow else []:
                if link not in seen and self._fetchable(link):
                    seen.add(link)
                    queue.append(link)
            if not index or not self._in_prefix(response.url):
                continue
            path = _unique(url_to_path(response.url, kind), response.url, taken)
            if not selected(path, self.config.include, self.config.exclude):
                continue
            if not response.unchanged:
                self._store(path, response.body)
            page = Page(path=path, ref=ref, title=title, url=response.url, modified=modified)
            listing.pages.append(page)
            before = record if response.unchanged and record else {}  # a 304 may leave validators out
            etag = response.etag or before.get("etag") or ""
            last_modified = response.last_modified or before.get("last_modified") or ""
            if etag or last_modified:
                same_site = (link for link in links if self._in_site(link) and _suffix(link) not in SKIPPED_SUFFIXES)
                records[url] = {
                    "etag": etag,
                    "last_modified": last_modified,
                    "ref": ref,
                    "path": path,
                    "title": title,
                    "url": response.url,
                    "modified": modified.isoformat() if modified else None,
                    "kind": kind,
                    "links": list(dict.fromkeys(same_site))[:MAX_STORED_LINKS],
                }
        if listing.failures:
            listing.complete = False
        listing.cursor = {"fetched": fetched, "pages": records}
        return listing

    def fetch(self, page: Page) -> bytes:
        """The page's bytes as the last listing read them (read again if it was not listed)."""
        stored = self._stored.get(page.path)
        if stored is not None:
            return stored.read_bytes()
        url = normalise_url(page.url)
        if url is None or not self._in_site(url):
            raise SourceError(f"{redact_url(page.url)} is not part of the site {redact_url(self.start)}.")
        if not self._load_robots().can_fetch(url, USER_AGENT):
            raise SourceError(f"robots.txt of the site forbids reading {redact_url(url)}.")
        return self._get(url).body

    def close(self) -> None:
        self.session.close()
        self._clear_store()

    # --- requests ---

    def _pause(self) -> None:
        """Wait so that two requests to the site are at least `delay` seconds apart."""
        if self._last_request is not None and self.delay > 0:
            wait = self.delay - (_clock() - self._last_request)
            if wait > 0:
                _sleep(wait)
        self._last_request = _clock()

    def _fetch(
        self, url: str, *, allow_redirects: bool = True, headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, requests.Response]:
        self._pause()
        return fetch_bytes(self.session, url, limits=self.limits, headers=headers, allow_redirects=allow_redirects)

    def _get(self, url: str, record: Mapping[str, Any] | None = None) -> _Response:
        """GET a page, following redirects one hop at a time while they stay on the site; with a
        cursor record, the request for its final URL is conditional (a 304 comes back unchanged)."""
        robots = self._load_robots()
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            headers: dict[str, str] = {}
            if record is not None and current == record.get("url"):
                if record.get("etag"):
                    headers["If-None-Match"] = str(record["etag"])
                if record.get("last_modified"):
                    headers["If-Modified-Since"] = str(record["last_modified"])
            body, response = self._fetch(current, allow_redirects=False, headers=headers)
            etag, last_modified = response.headers.get("ETag", ""), response.headers.get("Last-Modified", "")
            if response.status_code == 304:
                if not headers:
                    raise SourceError(f"{redact_url(current)} answered 304 Not Modified to a plain request.")
                return _Response(current, b"", "", None, etag, last_modified, unchanged=True)
            if not response.is_redirect:
                return _Response(
                    url=current,
                    body=body,
                    content_type=response.headers.get("Content-Type", ""),
                    modified=_http_date(last_modified),
                    etag=etag,
                    last_modified=last_modified,
                )
            target = normalise_url(urljoin(current, response.headers["Location"]))
            if target is None or not self._in_site(target) or not robots.can_fetch(target, USER_AGENT):
                where = redact_url(target) if target else "a non-web address"
                raise _LeftSite(f"{redact_url(current)} redirects to {where}, outside the site.")
            current = target
        raise SourceError(f"Too many redirects from {redact_url(url)}.")

    def _load_robots(self) -> Protego:
        """The site's robots.txt; a missing one (4xx) allows everything, a failing one stops the sync."""
        if self._robots is not None:
            return self._robots
        scheme, host, port = self.origin
        netloc = f"[{host}]" if ":" in host else host
        if port != DEFAULT_PORTS[scheme]:
            netloc = f"{netloc}:{port}"
        url = f"{scheme}://{netloc}/robots.txt"
        try:
            body, _ = self._fetch(url)
        except HTTPStatusError as exc:
            if not 400 <= exc.status < 500:
                raise SourceError(
                    f"{redact_url(url)} answered HTTP {exc.status}; the site is not read while it cannot say "
                    "what may be read."
                ) from None
            body = b""
        except SourceError as exc:
            raise SourceError(f"Cannot read the site's robots.txt: {exc}") from None
        self._robots = Protego.parse(body.decode("utf-8", "replace"))
        crawl_delay = self._robots.crawl_delay(USER_AGENT) or 0.0
        self.delay = max(self.limits.delay, min(float(crawl_delay), MAX_CRAWL_DELAY))
        return self._robots

    def _sitemap_urls(self, listing: Listing) -> list[str]:
        """The page URLs of the sitemap (and of the sitemaps a sitemap index names), on the site."""
        assert self.sitemap is not None
        pending = deque([self.sitemap])
        done: set[str] = set()
        urls: list[str] = []
        while pending and len(done) < MAX_SITEMAPS:
            sitemap = pending.popleft()
            if sitemap in done:
                continue
            done.add(sitemap)
            try:
                body, _ = self._fetch(sitemap)
                if body[:2] == b"\x1f\x8b":
                    body = _gunzip(body, self.limits.max_bytes, sitemap)
            except SourceError as exc:
                if sitemap == self.sitemap:
                    raise SourceError(f"Cannot read the sitemap: {exc}") from None
                listing.failures.append((redact_url(sitemap), str(exc)))
                continue
            text = body.decode("utf-8", "replace")
            locations = [normalise_url(unescape(location)) for location in _LOC.findall(text)]
            on_site = [location for location in locations if location and self._in_site(location)]
            if _SITEMAP_INDEX.search(text):
                pending.extend(on_site)
            else:
                urls.extend(location for location in on_site if self._in_prefix(location))
        if pending:
            listing.complete = False
        return list(dict.fromkeys(urls))

    # --- the site ---

    def _in_site(self, url: str) -> bool:
        return _origin(url) == self.origin

    def _in_prefix(self, url: str) -> bool:
        return not self.prefix or urlsplit(url).path.startswith(self.prefix)

    def _fetchable(self, url: str) -> bool:
        return self._in_site(url) and self._in_prefix(url) and _suffix(url) not in SKIPPED_SUFFIXES

    # --- bodies kept between list_pages and fetch ---

    def _store(self, path: str, body: bytes) -> None:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="kb-web-"))
        file = self._folder / str(len(self._stored))
        file.write_bytes(body)
        self._stored[path] = file

    def _clear_store(self) -> None:
        self._stored = {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
