"""Confluence (Cloud and Data Center): every current page of one space, as HTML, by version number.

The listing asks REST API v1 for the space's pages with their version and ancestors, page
by page of results, so it costs one request per hundred pages and no page bodies. A page's
ref is its version number: kb fetches the body (`body.storage`) only of pages whose version
changed since the last sync. Ancestor titles become folders, so the breadcrumb is the page
tree. With options["attachments"], a page's PDF, Word, Markdown and text attachments are
listed too, under a folder named after the page.

atlassian-python-api carries the credentials and the HTTP; its requests session is kb's
guarded one (ingestion/connectors/net.py). We address REST v1 by absolute URL rather than
through the library's per-resource helpers, whose paths differ between its Cloud (v2) and
Server classes; v1 answers the same way on both.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from atlassian import Confluence

from ingestion.connectors.base import (
    Listing,
    Page,
    SourceConfig,
    SourceError,
    parse_iso_datetime,
    safe_segment,
    selected,
)
from ingestion.connectors.net import HTTPStatusError, TooLarge, fetch_bytes, guarded_session, redact_url

ATTACHMENT_SUFFIXES = (".pdf", ".docx", ".md", ".txt")
PAGE_SIZE = 100  # results a listing request asks for; the server may cap it lower


@dataclass
class _Item:
    """One listed page or attachment, with what fetch needs and what the path is built from."""

    id: str
    title: str
    ref: str
    url: str
    modified: datetime | None
    parent: str | None  # page id of the parent page; for an attachment, its page
    attachment: bool = False
    download: str = ""


class ConfluenceConnector:
    """One Confluence space: config.location is the base URL, options["space"] the space key."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.limits = config.limits
        base = config.location.strip().rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(
                "The Confluence address must be an http(s) base URL, such as https://wiki.corp "
                "or https://example.atlassian.net/wiki."
            )
        if parts.username or parts.password:
            raise SourceError("Put the Confluence credentials in the source's credentials, not in its address.")
        self.base = base
        self.origin = (parts.scheme, parts.netloc.lower())
        options = config.options or {}
        self.space = str(options.get("space") or "").strip()
        if not self.space:
            raise SourceError("A Confluence source needs the key of the space to read (option 'space').")
        host = (parts.hostname or "").lower()
        self.cloud = host == "atlassian.net" or host.endswith(".atlassian.net") or bool(options.get("cloud"))
        self.attachments = bool(options.get("attachments"))
        self.session = guarded_session(self.limits)
        self._client: Confluence | None = None
        # Page path -> content id or download URL, from the last listing, for fetch.
        self._items: dict[str, _Item] = {}

    # --- HTTP -------------------------------------------------------------------------------

    def _api(self) -> Confluence:
        if self._client is None:
            credentials = self.config.credentials or {}
            username = (credentials.get("username") or "").strip()
            secret = credentials.get("token") or credentials.get("password") or ""
            auth: dict[str, Any] = {}
            if username and secret:
                # Cloud: account email + API token; Data Center: username + password, both basic auth.
                auth = {"username": username, "password": secret}
            elif secret:
                auth = {"token": secret}  # Data Center personal access token, sent as a bearer token
            self._client = Confluence(
                self.base,
                cloud=self.cloud,
                session=self.session,
                # The library sends its own per-request timeout (whole seconds), overriding the session's.
                timeout=max(1, math.ceil(self.limits.timeout)),
                # A rate-limited Cloud site says how long to wait; never wait longer than a minute.
                max_backoff_seconds=60,
                **auth,
            )
        return self._client

    def _same_site(self, url: str) -> bool:
        """Whether a URL Confluence handed us is on the configured site (credentials go nowhere else)."""
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc.lower()) == self.origin

    def _get(self, url: str, what: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET a REST URL as JSON; every failure a SourceError that says what could not be read."""
        try:
            data = self._api().get(url, params=dict(params) if params else None, absolute=True)
        except SourceError:
            raise  # refused address, oversized answer: the guard's message already says why
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise self._status_error(status, what) from None
        except requests.Timeout:
            raise SourceError(f"Confluence at {self.base} did not answer within {self.limits.timeout:g} s.") from None
        except requests.ConnectionError:
            raise SourceError(f"Confluence at {self.base} could not be reached (connection failed).") from None
        except requests.RequestException as exc:
            raise SourceError(f"Confluence at {self.base} could not be read ({type(exc).__name__}).") from None
        if not isinstance(data, dict):
            raise SourceError(
                f"{self.base} did not answer as the Confluence REST API for {what}; "
                "is the address the Confluence base URL (Cloud: https://<site>.atlassian.net/wiki)?"
            )
        return data

    def _status_error(self, status: int, what: str) -> SourceError:
        if status == 401:
            return SourceError(
                "Confluence refused the credentials (HTTP 401): check the username (Cloud: the account's "
                "email) and the API token, or the personal access token on Data Center."
            )
        if status == 403:
            return SourceError(f"Confluence refused access to {what} (HTTP 403): the account may not read it.")
        if status == 404:
            return SourceError(f"Confluence has no {what}, or the account may not see it (HTTP 404).")
        if status == 429:
            return SourceError("Confluence is rate-limiting kb (HTTP 429); the next sync will try again.")
        return SourceError(f"Confluence answered HTTP {status} for {what}.")

    def _absolute(self, link: str, base: str) -> str:
        """A link from a `_links` object (relative to the response's base URL) made absolute."""
        if urlsplit(link).scheme:
            return link
        return f"{base.rstrip('/')}/{link.lstrip('/')}"

    def _ours(self, link: str, remote_base: str) -> str:
        """A link to request, on the configured address.

        Confluence writes links against its own idea of its base URL, which behind a proxy
        or with a stale Server Base URL is not the address kb reaches it at: the part after
        that base is joined to ours, so requests and credentials stay on the configured site.
        """
        remote_base = remote_base.rstrip("/")
        if remote_base and link.startswith(remote_base + "/"):
            link = link[len(remote_base) :]
        return self._absolute(link, self.base)

    def _paged(self, url: str, params: Mapping[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """Every result of a paginated v1 collection, following `_links.next` from page to page."""
        next_url: str | None = url
        query: Mapping[str, Any] | None = params
        seen: set[str] = set()
        while next_url:
            data = self._get(next_url, what, query)
            results = data.get("results")
            if not isinstance(results, list):
                raise SourceError(f"Confluence's answer for {what} has no list of results.")
            yield from (item for item in results if isinstance(item, dict))
            links = data.get("_links") or {}
            link = links.get("next")
            if not link or not results:
                return
            # `next` is relative to the base URL, which carries the context path (/wiki, /confluence).
            next_url = self._ours(str(link), str(links.get("base") or ""))
            if not self._same_site(next_url):
                raise SourceError(f"Confluence's next page of {what} points to another site ({redact_url(next_url)}).")
            if next_url in seen:
                raise SourceError(f"Confluence's pagination of {what} loops; the listing stopped.")
            seen.add(next_url)
            query = None  # the next link carries every parameter

    # --- listing ----------------------------------------------------------------------------

    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        """Every current page of the space (and its attachments when asked), by version number."""
        listing = Listing()
        # The space first: its 404 tells a wrong key apart from a space that is empty.
        space = self._get(f"{self.base}/rest/api/space/{quote(self.space, safe='~')}", f"space {self.space!r}")
        base = str((space.get("_links") or {}).get("base") or self.base)
        records: list[dict[str, Any]] = []
        ids: set[str] = set()
        params = {"spaceKey": self.space, "type": "page", "status": "current", "expand": "version,ancestors"}
        for record in self._paged(
            f"{self.base}/rest/api/content", {**params, "limit": PAGE_SIZE}, f"the pages of space {self.space!r}"
        ):
            # Offsets shift when a page is added while we list: the same page may come twice.
            if str(record.get("id")) in ids:
                continue
            ids.add(str(record.get("id")))
            if len(records) >= self.limits.max_pages:
                listing.complete = False
                listing.failures.append((self.space, f"stopped after {self.limits.max_pages} pages (the page budget)"))
                break
            records.append(record)

        pairs = [(self._page_item(record, base), record) for record in records if record.get("id")]
        items = [item for item, _ in pairs]
        paths = self._page_paths(pairs)
        if self.attachments:
            for page in list(items):
                try:
                    attachments = self._attachments(page, base)
                except SourceError as exc:
                    # Its attachments unknown, kb must not remove the ones it has: mark the listing partial.
                    listing.failures.append((paths[page.id], str(exc)))
                    listing.complete = False
                    continue
                folder = paths[page.id].removesuffix(".html")
                taken: set[str] = set()
                for attachment in sorted(attachments, key=lambda a: _numeric(a.id)):
                    # The suffix survives a long name being cut: it tells kb how to read the file.
                    stem, _, suffix = attachment.title.rpartition(".")
                    path = _unique(f"{folder}/{safe_segment(stem)}", f".{suffix.lower()}", attachment.id, taken)
                    taken.add(path)
                    paths[attachment.id] = path
                    items.append(attachment)

        self._items = {}
        for item in items:
            path = paths[item.id]
            if not selected(path, self.config.include, self.config.exclude):
                continue
            self._items[path] = item
            listing.pages.append(Page(path=path, ref=item.ref, title=item.title, url=item.url, modified=item.modified))
        return listing

    def _page_item(self, record: dict[str, Any], base: str) -> _Item:
        version = record.get("version") or {}
        ancestors = [a for a in record.get("ancestors") or [] if isinstance(a, dict)]
        webui = str((record.get("_links") or {}).get("webui") or "")
        return _Item(
            id=str(record["id"]),
            title=str(record.get("title") or ""),
            ref=str(version.get("number", "")),
            url=self._absolute(webui, base) if webui else "",
            modified=parse_iso_datetime(version.get("when")),
            parent=str(ancestors[-1]["id"]) if ancestors and ancestors[-1].get("id") else None,
        )

    def _page_paths(self, pairs: list[tuple[_Item, dict[str, Any]]]) -> dict[str, str]:
        """Page id -> path: ancestor titles as folders, then the title, + ".html".

        Two sibling pages whose titles read the same once made safe ("A/B", "A-B") would share a
        path: the older one (lower id) keeps it, the other gets its id appended, folder included,
        so its children stay apart too.
        """
        segment: dict[str, str] = {}
        taken: dict[str | None, set[str]] = {}
        for item, _ in sorted(pairs, key=lambda pair: _numeric(pair[0].id)):
            siblings = taken.setdefault(item.parent, set())
            name = _unique(safe_segment(item.title), "", item.id, siblings)
            siblings.add(name)
            segment[item.id] = name
        paths: dict[str, str] = {}
        for item, record in pairs:
            folders = [
                segment.get(str(ancestor.get("id")), safe_segment(str(ancestor.get("title") or "")))
                for ancestor in record.get("ancestors") or []
                if isinstance(ancestor, dict)
            ]
            paths[item.id] = "/".join([*folders, segment[item.id]]) + ".html"
        return paths

    def _attachments(self, page: _Item, base: str) -> list[_Item]:
        """The page's attachments kb can read (PDF, Word, Markdown, text)."""
        found = []
        url = f"{self.base}/rest/api/content/{page.id}/child/attachment"
        params = {"expand": "version", "limit": PAGE_SIZE}
        for record in self._paged(url, params, f"the attachments of page {page.title!r}"):
            title = str(record.get("title") or "")
            download = str((record.get("_links") or {}).get("download") or "")
            if not record.get("id") or not download or not title.lower().endswith(ATTACHMENT_SUFFIXES):
                continue
            version = record.get("version") or {}
            found.append(
                _Item(
                    id=str(record["id"]),
                    title=title,
                    ref=str(version.get("number", "")),
                    url=self._absolute(download, base),  # as people reach it, for citations
                    modified=parse_iso_datetime(version.get("when")),
                    parent=page.id,
                    attachment=True,
                    download=self._ours(download, base),
                )
            )
        return found

    # --- fetching ---------------------------------------------------------------------------

    def fetch(self, page: Page) -> bytes:
        """A page as a small HTML document (title + storage format), or an attachment's bytes."""
        item = self._items.get(page.path)
        if item is None:
            # Not from this connector's listing: pages end in .html, attachments in their own suffix.
            if not page.path.endswith(".html"):
                return self._fetch_attachment(page, page.url)
            content_id = self._find_id(page.title)
        elif item.attachment:
            return self._fetch_attachment(page, item.download)
        else:
            content_id = item.id
        data = self._get(
            f"{self.base}/rest/api/content/{content_id}",
            f"page {page.title or page.path!r}",
            {"expand": "body.storage,version"},
        )
        storage = ((data.get("body") or {}).get("storage") or {}).get("value")
        if not isinstance(storage, str):
            raise SourceError(f"Confluence returned no body for page {page.title or page.path!r}.")
        title = html.escape(str(data.get("title") or page.title))
        document = (
            f'<html><head><meta charset="utf-8"><title>{title}</title></head>'
            f"<body><h1>{title}</h1>{storage}</body></html>"
        ).encode()
        if len(document) > self.limits.max_bytes:
            raise TooLarge(
                f"Page {page.title or page.path!r} is larger than the limit of {self.limits.max_bytes} bytes."
            )
        return document

    def _find_id(self, title: str) -> str:
        """A page's content id by its title (fetch without a listing in this connector)."""
        if not title:
            raise SourceError("Cannot fetch a Confluence page that was not listed and has no title.")
        params = {"spaceKey": self.space, "title": title, "type": "page"}
        data = self._get(f"{self.base}/rest/api/content", f"page {title!r}", params)
        results = data.get("results") or []
        if not results or not isinstance(results[0], dict) or not results[0].get("id"):
            raise SourceError(f"Confluence page {title!r} no longer exists in space {self.space!r}.")
        return str(results[0]["id"])

    def _fetch_attachment(self, page: Page, url: str) -> bytes:
        if not url or not self._same_site(url):
            # The session carries the credentials: never send them to another site.
            raise SourceError(f"Attachment {page.path!r} has no download address on {self.base}.")
        self._api()  # the client puts the credentials on the session
        try:
            body, _ = fetch_bytes(self.session, url, limits=self.limits, headers={"Accept": "*/*"})
        except HTTPStatusError as exc:
            raise self._status_error(exc.status, f"attachment {page.path!r}") from None
        return body

    def close(self) -> None:
        self.session.close()


def _numeric(content_id: str) -> tuple[int, str]:
    """Sort key: ids are numbers ("att123" for attachments); older content has lower ones."""
    digits = "".join(ch for ch in content_id if ch.isdigit())
    return (int(digits) if digits else 0, content_id)


def _unique(stem: str, suffix: str, content_id: str, taken: set[str]) -> str:
    """stem + suffix, or with the content id between them when another item already has that name."""
    name = stem + suffix
    return f"{stem} ({content_id}){suffix}" if name in taken else name
