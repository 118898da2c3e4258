"""What every source connector speaks: a listing of pages with version markers, then page bytes.

A connector knows one kind of place where documents live (a Git repository, a server folder,
an intranet site, Confluence, MediaWiki). It lists every page there now, each with a `ref`
that changes when the page changes (a blob id, a version number, a revision id, a content
hash), and fetches the bytes of the pages kb asks for: those whose ref differs from the one
kb stored. kb does the rest (kb.services.sources): documents added, replaced and removed in
one batch, processing as for uploads.

Pure: nothing here imports kb. Errors a person can act on are SourceError, whose message
never contains credentials.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


class SourceError(Exception):
    """A source (or one of its pages) could not be read; the message says why, without secrets."""


@dataclass(frozen=True)
class Limits:
    """What one sync may do: kept by every connector."""

    max_bytes: int = 50 * 1024 * 1024  # one fetched page or file
    timeout: float = 30.0  # seconds, one request (connect + read)
    # Hosts (names or addresses) that may be private: "wiki.corp", "10.0.0.12". Everything
    # else must resolve to public addresses only (ingestion/connectors/net.py).
    allowed_hosts: frozenset[str] = frozenset()
    # Server directories git and folder sources may read; nothing outside them.
    roots: tuple[Path, ...] = ()
    max_pages: int = 5000  # pages one run lists at most (a web crawl's budget)
    delay: float = 0.0  # seconds between two requests to the same site (politeness)


@dataclass(frozen=True)
class SourceConfig:
    kind: str  # "git" | "folder" | "web" | "confluence" | "mediawiki"
    location: str  # repository URL or path, directory, start URL, base URL of the wiki
    branch: str = ""
    include: tuple[str, ...] = ()  # glob patterns over page paths; empty: everything
    exclude: tuple[str, ...] = ()
    # Kind-specific: web {"prefix", "sitemap"}, confluence {"space", "attachments"},
    # mediawiki {"namespaces": [0, ...]}, git {"web_url": "https://git.corp/team/wiki/blob/{commit}/{path}"}
    options: Mapping[str, Any] = field(default_factory=dict)
    credentials: Mapping[str, str] = field(default_factory=dict)  # {"username", "token"}; never logged
    limits: Limits = field(default_factory=Limits)

    def __repr__(self) -> str:  # never print the credentials
        return f"SourceConfig(kind={self.kind!r}, location={self.location!r})"


@dataclass
class Page:
    """One page as the source lists it."""

    # Posix path inside the source: its folders are the breadcrumb, its suffix names the
    # format kb reads it as (.md, .html, .txt, .pdf, .docx). Unique within one listing.
    path: str
    ref: str  # version marker: the same ref means the same content, so kb skips the fetch
    title: str = ""  # as the source names it; "" lets kb derive one from the path
    url: str = ""  # the page's own address for citations ("" when the source has none)
    modified: datetime | None = None  # last change at the source, timezone-aware


@dataclass
class Listing:
    pages: list[Page] = field(default_factory=list)  # every page in the source now, after include/exclude
    failures: list[tuple[str, str]] = field(default_factory=list)  # (page path or URL, reason)
    # Opaque state kept for the next run (the commit synced, a crawl's validators ...).
    cursor: dict[str, Any] = field(default_factory=dict)
    # False when the listing stopped early (page budget, a part unreadable): kb must not
    # remove documents missing from an incomplete listing.
    complete: bool = True

    def within_budget(self, paths: list[str], max_pages: int) -> list[str]:
        """The first `max_pages` of the sorted paths; past the budget the listing is incomplete."""
        paths = sorted(paths)
        if len(paths) > max_pages:
            self.complete = False
            return paths[:max_pages]
        return paths


class Connector(Protocol):
    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        """Every page now in the source. `known` maps page paths to the refs kb stored last time."""
        ...

    def fetch(self, page: Page) -> bytes:
        """The page's bytes, within Limits.max_bytes; SourceError when it cannot be read."""
        ...

    def close(self) -> None: ...


def selected(path: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Whether a page path passes the include and exclude globs (fnmatch: `*` also crosses `/`)."""
    if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


MAX_SEGMENT = 150  # characters of one title in a path, so paths stay within file-name limits
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def safe_segment(title: str) -> str:
    """A page title as one path segment: no slashes or control characters, never empty or dots only."""
    segment = _CONTROL.sub(" ", title).replace("/", "-").replace("\\", "-").strip()
    segment = segment.lstrip(".").strip()[:MAX_SEGMENT].strip()
    return segment or "untitled"


def parse_iso_datetime(value: Any) -> datetime | None:
    """An ISO 8601 time from a wiki's API ("2024-05-02T10:15:30.000Z", "...+02:00"), aware; None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
