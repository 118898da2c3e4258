"""A stand-in MediaWiki Action API (api.php) for the connector tests.

It answers what mwclient and the connector ask, in the JSON shapes of the API documentation
(mediawiki.org/wiki/API): siteinfo and userinfo at connect, login tokens and `action=login`
with a session cookie, `generator=allpages` with `prop=info|revisions` and `continue`,
`action=parse` (formatversion 1 and 2), and `{"error": {"code", "info"}}` errors. Pages can
be added, edited, moved and deleted between syncs; allpages answers two pages at a time, so
every listing continues. With `private=True` only a logged-in session may read, like a wiki
with `$wgGroupPermissions['*']['read'] = false`.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins import LoopbackStandin, send_json

NAMESPACES = {
    -2: "Media",
    -1: "Special",
    0: "",
    1: "Talk",
    2: "User",
    4: "Project",
    6: "File",
    12: "Help",
    14: "Category",
}


@dataclass
class Revision:
    revid: int
    timestamp: str
    html: str


@dataclass
class WikiPage:
    pageid: int
    ns: int
    title: str
    revisions: list[Revision] = field(default_factory=list)
    redirect: bool = False


@dataclass
class Seen:
    method: str
    path: str  # with the query string
    params: dict[str, str]  # query and form together
    headers: dict[str, str]


class MediaWikiStandin(LoopbackStandin):
    """`with MediaWikiStandin(...) as wiki:` runs it on a free port; `wiki.url` is the script path URL."""

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        private: bool = False,
        script_path: str = "/w",
        page_size: int = 2,
    ) -> None:
        self.users = users or {}  # bot-password login name ("Kb@sync") -> password
        self.private = private
        self.script_path = script_path.rstrip("/")
        self.page_size = page_size
        self.pages: dict[str, WikiPage] = {}  # by title
        self.requests: list[Seen] = []
        self.sessions: dict[str, dict[str, str]] = {}  # cookie -> {"token", "user"}
        self._pageid = 0
        self._revid = 100
        self._clock = 0
        self._lock = threading.Lock()

    # --- content a test changes -----------------------------------------------------------

    def _timestamp(self) -> str:
        self._clock += 1
        return f"2024-05-{1 + self._clock // 24:02d}T{self._clock % 24:02d}:00:00Z"

    def _revision(self, html: str) -> Revision:
        self._revid += 1
        return Revision(self._revid, self._timestamp(), html)

    def add(self, title: str, html: str = "<p>text</p>", *, redirect: bool = False) -> WikiPage:
        ns = next((n for n, name in NAMESPACES.items() if name and title.startswith(name + ":")), 0)
        self._pageid += 1
        page = WikiPage(self._pageid, ns, title, [self._revision(html)], redirect)
        self.pages[title] = page
        return page

    def edit(self, title: str, html: str) -> WikiPage:
        page = self.pages[title]
        page.revisions.append(self._revision(html))
        return page

    def move(self, title: str, new_title: str, *, leave_redirect: bool = True) -> WikiPage:
        """Rename as Special:MovePage does: same page id, a new (null) revision, a redirect left behind."""
        page = self.pages.pop(title)
        page.title = new_title
        page.revisions.append(self._revision(page.revisions[-1].html))
        self.pages[new_title] = page
        if leave_redirect:
            self.add(title, f'<div class="redirectMsg"><p>Redirect to:</p><a href="/wiki/{new_title}">', redirect=True)
        return page

    def delete(self, title: str) -> None:
        del self.pages[title]

    # --- server ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler  # defined below, with the answers

    @property
    def url(self) -> str:
        return f"{self.origin}{self.script_path}/"

    # --- answers --------------------------------------------------------------------------

    def answer(self, params: dict[str, str], session: dict[str, str]) -> dict[str, Any]:
        v2 = params.get("formatversion") == "2"
        action = params.get("action")
        user = session.get("user")
        if action == "login":
            return self.login(params, session)
        if action == "query" and params.get("meta") == "tokens":
            session["token"] = secrets.token_hex(16) + "+\\"
            return {"batchcomplete": True if v2 else "", "query": {"tokens": {"logintoken": session["token"]}}}
        if self.private and not user:
            return _error("readapidenied", "You need read permission to use this module.", v2)
        if action == "query":
            return self.query(params, user, v2)
        if action == "parse":
            return self.parse(params, v2)
        return _error("badvalue", f'Unrecognized value for parameter "action": {action}.', v2)

    def login(self, params: dict[str, str], session: dict[str, str]) -> dict[str, Any]:
        if not session.get("token") or params.get("lgtoken") != session["token"]:
            reason = "Unable to continue login. Your session most likely timed out."
            return {"login": {"result": "Failed", "reason": reason}}
        name = params.get("lgname", "")
        if name not in self.users or self.users[name] != params.get("lgpassword"):
            reason = "Incorrect username or password entered. Please try again."
            return {"login": {"result": "Failed", "reason": reason}}
        session["user"] = name.split("@", 1)[0]
        return {"login": {"result": "Success", "lguserid": 2, "lgusername": session["user"]}}

    def userinfo(self, user: str | None, v2: bool) -> dict[str, Any]:
        if user:
            return {"id": 2, "name": user, "groups": ["bot", "*", "user"], "rights": ["read", "bot"]}
        return {"id": 0, "name": "127.0.0.1", "anon": True if v2 else "", "groups": ["*"], "rights": ["read"]}

    def query(self, params: dict[str, str], user: str | None, v2: bool) -> dict[str, Any]:
        meta = set((params.get("meta") or "").split("|"))
        result: dict[str, Any] = {"batchcomplete": True if v2 else ""}
        query: dict[str, Any] = {}
        if "siteinfo" in meta:
            query["general"] = {
                "mainpage": "Main Page",
                "base": f"{self.origin}/wiki/Main_Page",
                "sitename": "Corp Wiki",
                "generator": "MediaWiki 1.43.0",
                "phpversion": "8.1.2",
                "dbtype": "mysql",
                "case": "first-letter",
                "lang": "en",
                "server": self.origin,
                "servername": "127.0.0.1",
                "wikiid": "corpwiki",
                "articlepath": "/wiki/$1",
                "scriptpath": self.script_path,
                "script": f"{self.script_path}/index.php",
                "time": "2024-05-02T10:15:30Z",
            }
            query["namespaces"] = {str(n): _namespace(n, name, v2) for n, name in NAMESPACES.items()}
        if "userinfo" in meta:
            query["userinfo"] = self.userinfo(user, v2)
        if params.get("generator") == "allpages":
            try:
                namespace = int(params.get("gapnamespace", "0"))
            except ValueError:
                namespace = None
            if namespace not in NAMESPACES or namespace < 0:
                return _error("badvalue", f'Unrecognized value for parameter "gapnamespace": {namespace}.', v2)
            pages = sorted(
                (p for p in self.pages.values() if p.ns == namespace),
                key=lambda p: p.title.replace(" ", "_"),
            )
            if params.get("gapfilterredir") == "nonredirects":
                pages = [p for p in pages if not p.redirect]
            elif params.get("gapfilterredir") == "redirects":
                pages = [p for p in pages if p.redirect]
            start = params.get("gapcontinue")
            if start:
                pages = [p for p in pages if p.title.replace(" ", "_") >= start]
            limit = self.page_size if params.get("gaplimit") == "max" else min(int(params["gaplimit"]), self.page_size)
            if len(pages) > limit:
                following = pages[limit].title.replace(" ", "_")
                result["continue"] = {"gapcontinue": following, "continue": "gapcontinue||"}
            records = [self.info(p, set((params.get("prop") or "").split("|"))) for p in pages[:limit]]
            query["pages"] = records if v2 else {str(r["pageid"]): r for r in records}
        result["query"] = query
        return result

    def info(self, page: WikiPage, prop: set[str]) -> dict[str, Any]:
        latest = page.revisions[-1]
        record: dict[str, Any] = {"pageid": page.pageid, "ns": page.ns, "title": page.title}
        if "info" in prop:
            record.update(
                contentmodel="wikitext",
                pagelanguage="en",
                pagelanguagehtmlcode="en",
                pagelanguagedir="ltr",
                touched=latest.timestamp,
                lastrevid=latest.revid,
                length=len(latest.html),
            )
            if page.redirect:
                record["redirect"] = True
        if "revisions" in prop:
            parent = page.revisions[-2].revid if len(page.revisions) > 1 else 0
            record["revisions"] = [{"revid": latest.revid, "parentid": parent, "timestamp": latest.timestamp}]
        return record

    def parse(self, params: dict[str, str], v2: bool) -> dict[str, Any]:
        if "oldid" in params:
            found = [(p, r) for p in self.pages.values() for r in p.revisions if str(r.revid) == params["oldid"]]
            if not found:
                return _error("nosuchrevid", f"There is no revision with ID {params['oldid']}.", v2)
            page, revision = found[0]
        else:
            page = self.pages.get(params.get("page", ""))
            if page is None:
                return _error("missingtitle", "The page you specified doesn't exist.", v2)
            revision = page.revisions[-1]
        text = f'<div class="mw-content-ltr mw-parser-output" lang="en" dir="ltr">{revision.html}</div>'
        display = f'<span class="mw-page-title-main">{page.title}</span>'
        parsed: dict[str, Any] = {"title": page.title, "pageid": page.pageid, "revid": revision.revid}
        parsed["text"] = text if v2 else {"*": text}
        parsed["displaytitle"] = display
        return {"parse": parsed}


def _namespace(number: int, name: str, v2: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"id": number, "case": "first-letter"}
    if name:
        record["canonical"] = name
    if number == 0:
        record["content"] = True if v2 else ""
    if number in (2, 4, 12):
        record["subpages"] = True if v2 else ""
    record["name" if v2 else "*"] = name
    return record


def _error(code: str, info: str, v2: bool) -> dict[str, Any]:
    docref = "See http://127.0.0.1/w/api.php for API usage."
    error = {"code": code, "info": info, "docref" if v2 else "*": docref}
    return {"error": error, "servedby": "standin"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: MediaWikiStandin

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle("")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length).decode())

    def _handle(self, form: str) -> None:
        wiki = self.standin
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        params.update({k: v[-1] for k, v in parse_qs(form, keep_blank_values=True).items()})
        wiki.requests.append(Seen(self.command, self.path, params, dict(self.headers.items())))
        if parts.path != f"{wiki.script_path}/api.php":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        cookie = SimpleCookie(self.headers.get("Cookie") or "")
        sid = cookie["corpwiki_session"].value if "corpwiki_session" in cookie else ""
        fresh = sid not in wiki.sessions
        if fresh:
            sid = secrets.token_hex(8)
        with wiki._lock:
            session = wiki.sessions.setdefault(sid, {})
            payload = wiki.answer(params, session)
        self._send(payload, f"corpwiki_session={sid}; path=/; HttpOnly" if fresh else "")

    def _send(self, payload: dict[str, Any], cookie: str) -> None:
        if not cookie:
            send_json(self, 200, payload)
            return
        # A new session: the answer carries its cookie, which send_json cannot add.
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(data)
