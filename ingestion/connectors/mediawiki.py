"""MediaWiki: every page of the chosen namespaces, rendered to HTML, by revision id.

The listing asks the Action API for all pages of each namespace with their latest revision
(`generator=allpages&prop=info|revisions`), 500 titles a request and no page text. A page's
ref is its latest revision id, so kb fetches (`action=parse` of exactly that revision) only
the pages edited since the last sync.

Incremental by recent changes: the revision ids already tell kb which pages changed, and only
a full listing shows which pages were deleted or moved away, so every run lists all titles
(cheap) and never downloads an unchanged page. The newest revision time seen is kept in the
cursor (`rc_timestamp`), where a later run could start `list=recentchanges` from.

mwclient speaks the API (login, continuation, retries) over kb's guarded requests session
(ingestion/connectors/net.py).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import mwclient
import mwclient.errors
import requests

from ingestion.connectors.base import (
    Listing,
    Page,
    SourceConfig,
    SourceError,
    parse_iso_datetime,
    safe_segment,
    selected,
)
from ingestion.connectors.net import TooLarge, guarded_session

USER_AGENT = "kb (knowledge base sync; mwclient)"


class MediaWikiConnector:
    """One wiki: config.location is where api.php lives (https://wiki.corp/w/), options["namespaces"] the ids."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.limits = config.limits
        location = config.location.strip()
        parts = urlsplit(location)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(
                "The wiki address must be an http(s) URL where api.php lives, such as https://wiki.corp/w/."
            )
        if parts.username or parts.password:
            raise SourceError("Put the wiki credentials in the source's credentials, not in its address.")
        self.scheme = parts.scheme
        self.host = parts.netloc.lower()
        path = parts.path
        if path.endswith(".php"):  # an address copied from the browser: /w/api.php, /index.php
            path = path.rsplit("/", 1)[0]
        elif not path.strip("/"):
            path = "/w/"  # the usual script path; a wiki served from the root is given as https://wiki.corp/api.php
        self.path = "/" + path.strip("/") + "/" if path.strip("/") else "/"
        namespaces = (config.options or {}).get("namespaces", [0])
        if isinstance(namespaces, int | str):  # one number, or "0, 12" as a form field gives it
            namespaces = str(namespaces).replace(",", " ").split()
        try:
            self.namespaces = list(dict.fromkeys(int(ns) for ns in namespaces))
        except (TypeError, ValueError):
            raise SourceError("The wiki's namespaces must be a list of namespace numbers, such as [0, 12].") from None
        if not self.namespaces:
            raise SourceError("Choose at least one namespace to read (0 is the main namespace).")
        self.session = guarded_session(self.limits)
        self.session.headers["User-Agent"] = USER_AGENT  # mwclient sets its own only on a session it creates
        self._site: mwclient.Site | None = None

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    # --- the API --------------------------------------------------------------------------

    def _connect(self) -> mwclient.Site:
        if self._site is not None:
            return self._site
        credentials = self.config.credentials or {}
        username = (credentials.get("username") or "").strip()
        password = credentials.get("password") or credentials.get("token") or ""
        site = self._call(
            lambda: mwclient.Site(
                self.host,
                path=self.path,
                scheme=self.scheme,
                pool=self.session,
                clients_useragent="kb",
                connection_options={"timeout": self.limits.timeout},
                # A sync is not interactive, but a page failing fast beats a run stalled in retries.
                max_retries=2,
                retry_timeout=2,
            ),
            "connect to",
        )
        if username and password:
            try:
                site.login(username, password)
            except mwclient.errors.LoginError as exc:
                # Never the exception's text: mwclient may carry the login request's data in it.
                raise SourceError(
                    f"The wiki at {self.where} refused the login ({_safe_code(exc.code)}): check the user name "
                    "and the bot password (Special:BotPasswords)."
                ) from None
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a message without secrets
                raise SourceError(f"Logging in to the wiki at {self.where} failed ({type(exc).__name__}).") from None
        elif username or password:
            raise SourceError("The wiki login needs both a user name and a (bot) password.")
        if not site.initialized:
            raise SourceError(
                f"The wiki at {self.where} lets only logged-in users read it; give the source a bot password."
            )
        self._site = site
        return site

    def _call(self, call: Any, action: str, gone: str = "") -> Any:
        """Run an API call; anything that fails becomes a SourceError a person can act on."""
        try:
            return call()
        except SourceError:
            raise  # refused address, oversized answer: the guard's message says why
        except mwclient.errors.APIError as exc:
            code = _safe_code(exc.code)
            if gone and code in ("missingtitle", "nosuchrevid", "nosuchpageid"):
                raise SourceError(gone) from None
            if code == "readapidenied":
                raise SourceError(
                    f"The wiki at {self.where} lets only logged-in users read it; give the source a bot password."
                ) from None
            info = exc.info if isinstance(exc.info, str) else ""
            raise SourceError(f"The wiki at {self.where} refused to {action} it: {code} ({info[:200]}).") from None
        except mwclient.errors.InvalidResponse:
            raise SourceError(
                f"{self.where} did not answer as a MediaWiki API; is it the wiki's script path (where api.php is)?"
            ) from None
        except mwclient.errors.APIDisabledError:
            raise SourceError(f"The wiki at {self.where} has its API turned off.") from None
        except mwclient.errors.MaximumRetriesExceeded:
            raise SourceError(f"The wiki at {self.where} kept failing; the next sync will try again.") from None
        except mwclient.errors.MwClientError as exc:
            raise SourceError(f"Could not {action} the wiki at {self.where} ({type(exc).__name__}).") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            hint = " (the address may be wrong)" if status == 404 else ""
            raise SourceError(f"The wiki at {self.where} answered HTTP {status}{hint}.") from None
        except requests.Timeout:
            raise SourceError(f"The wiki at {self.where} did not answer within {self.limits.timeout:g} s.") from None
        except requests.ConnectionError:
            raise SourceError(f"The wiki at {self.where} could not be reached (connection failed).") from None
        except requests.RequestException as exc:
            raise SourceError(f"The wiki at {self.where} could not be read ({type(exc).__name__}).") from None

    # --- listing ----------------------------------------------------------------------------

    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        """Every page of the chosen namespaces with its latest revision id."""
        site = self._connect()
        listing = Listing()
        found: dict[int, dict[str, Any]] = {}
        for namespace in self.namespaces:
            if not self._list_namespace(site, namespace, found):
                listing.complete = False
                listing.failures.append(
                    (f"namespace {namespace}", f"stopped after {self.limits.max_pages} pages (the page budget)")
                )
                break

        newest: datetime | None = None
        taken: set[str] = set()
        for pageid in sorted(found)[
            : self.limits.max_pages
        ]:  # older pages (lower ids) keep the plain path when two collide
            record = found[pageid]
            title = str(record.get("title") or "")
            revid = record.get("lastrevid") or (record.get("revisions") or [{}])[0].get("revid")
            if not title or not revid:
                continue
            revisions = record.get("revisions") or [{}]
            modified = parse_iso_datetime(revisions[0].get("timestamp")) or parse_iso_datetime(record.get("touched"))
            if modified and (newest is None or modified > newest):
                newest = modified
            path = self._path(site, title, int(record.get("ns") or 0))
            if path in taken:
                path = f"{path.removesuffix('.html')} ({pageid}).html"
            taken.add(path)
            if selected(path, self.config.include, self.config.exclude):
                listing.pages.append(
                    Page(path=path, ref=str(revid), title=title, url=self._url(site, title), modified=modified)
                )
        previous = cursor.get("rc_timestamp") if cursor else None
        listing.cursor = {"rc_timestamp": newest.strftime("%Y-%m-%dT%H:%M:%SZ") if newest else previous}
        return listing

    def _list_namespace(self, site: mwclient.Site, namespace: int, found: dict[int, dict[str, Any]]) -> bool:
        """Add the namespace's pages to `found`; False when the page budget ran out."""
        params: dict[str, Any] = {
            "generator": "allpages",
            "gapnamespace": namespace,
            "gaplimit": "max",
            # A redirect left by a move is no page of its own: the page it points to is listed.
            "gapfilterredir": "nonredirects",
            "prop": "info|revisions",
            "rvprop": "ids|timestamp",
            "formatversion": 2,
        }
        more: dict[str, Any] = {}
        while True:
            result = self._call(partial(site.get, "query", **params, **more), "list the pages of")
            for record in (result.get("query") or {}).get("pages") or []:
                if not isinstance(record, dict) or "pageid" not in record or record.get("missing"):
                    continue
                # Continuation may bring one page's properties in two answers: merge them.
                found.setdefault(int(record["pageid"]), {}).update(record)
                if len(found) > self.limits.max_pages:
                    return False
            more = result.get("continue") or {}
            if not more:
                return True

    def _path(self, site: mwclient.Site, title: str, namespace: int) -> str:
        """Path of a page: the namespace as a folder (but main), subpages as folders, + ".html"."""
        folders: list[str] = []
        if namespace != 0:
            prefix = str(site.namespaces.get(namespace) or "")
            if prefix and title.startswith(prefix + ":"):
                title = title[len(prefix) + 1 :]
            elif ":" in title:
                prefix, title = title.split(":", 1)
            folders.append(safe_segment(prefix or str(namespace)))
        parts = [safe_segment(part) for part in title.split("/") if part.strip()] or ["untitled"]
        return "/".join(folders + parts) + ".html"

    def _url(self, site: mwclient.Site, title: str) -> str:
        """The page's article URL: siteinfo's server + articlepath, with the title as MediaWiki encodes it."""
        general = getattr(site, "site", None) or {}
        server = str(general.get("server") or f"{self.scheme}://{self.host}")
        if server.startswith("//"):  # protocol-relative, as many wikis configure $wgServer
            server = f"{self.scheme}:{server}"
        article = str(general.get("articlepath") or f"{self.path}index.php?title=$1")
        encoded = quote(title.replace(" ", "_"), safe=";@$!*(),/~:")
        return server.rstrip("/") + article.replace("$1", encoded)

    # --- fetching ---------------------------------------------------------------------------

    def fetch(self, page: Page) -> bytes:
        """The page's rendered HTML (of the listed revision), as a small HTML document."""
        site = self._connect()
        which = {"oldid": page.ref} if page.ref.isdigit() else {"page": page.title}
        params = {"prop": "text|displaytitle", "formatversion": 2, "disableeditsection": 1, "disablelimitreport": 1}
        result = self._call(
            lambda: site.get("parse", **which, **params),
            f"render {page.title!r} from",
            gone=f"The wiki page {page.title!r} is gone (deleted, or its revision hidden).",
        )
        parsed = result.get("parse") or {}
        text = parsed.get("text")
        if isinstance(text, dict):  # formatversion 1 answers {"*": html}
            text = text.get("*")
        if not isinstance(text, str):
            raise SourceError(f"The wiki returned no text for {page.title!r}.")
        title = html.escape(page.title or str(parsed.get("title") or ""))
        document = (
            f'<html><head><meta charset="utf-8"><title>{title}</title></head><body><h1>{title}</h1>{text}</body></html>'
        ).encode()
        if len(document) > self.limits.max_bytes:
            raise TooLarge(f"Wiki page {page.title!r} is larger than the limit of {self.limits.max_bytes} bytes.")
        return document

    def close(self) -> None:
        self.session.close()


def _safe_code(code: Any) -> str:
    """An API error or login result code, kept to the word it should be."""
    return re.sub(r"[^A-Za-z0-9_-]", "", str(code or "unknown"))[:60] or "unknown"
