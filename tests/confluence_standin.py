"""A stand-in Confluence (Data Center shaped, REST API v1) for the connector tests.

It answers the few resources the connector reads, in the JSON shapes of Atlassian's REST v1
documentation (content list with `_links.next` relative to `_links.base`, content by id with
`body.storage`, a page's attachments, the 401 and 404 bodies), from pages a test can add,
edit, rename, move and delete between two syncs. Results come two at a time, so every
listing crosses page boundaries. It checks the Authorization header when given credentials
and records every request, headers included, so tests can see what was sent.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlencode, urlsplit

from tests.standins import LoopbackStandin, send_json


@dataclass
class Attachment:
    id: str
    title: str
    data: bytes
    media_type: str = "application/octet-stream"
    version: int = 1
    when: str = "2024-05-02T10:15:30.000Z"


@dataclass
class Content:
    id: str
    title: str
    body: str
    parent: str | None = None
    version: int = 1
    when: str = "2024-05-02T10:15:30.000Z"
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Seen:
    method: str
    path: str  # with the query string
    headers: dict[str, str]


class ConfluenceStandin(LoopbackStandin):
    """`with ConfluenceStandin(...) as wiki:` runs it on a free port; `wiki.url` is the base URL."""

    def __init__(
        self,
        *,
        space: str = "KB",
        context: str = "/confluence",
        username: str | None = None,
        token: str | None = None,
        page_size: int = 2,
        public_url: str | None = None,
    ) -> None:
        self.space = space
        # The Server Base URL Confluence writes its links against; behind a proxy it is not
        # the address a client reached it at.
        self.public_url = public_url
        self.context = context.rstrip("/")
        self.username = username
        self.token = token  # with a username: basic auth (Cloud API token); alone: a bearer token
        self.page_size = page_size
        self.pages: dict[str, Content] = {}
        self.requests: list[Seen] = []
        self.fail: dict[str, int] = {}  # path (after the context) -> HTTP status to answer instead
        self._next_id = 1000
        self._lock = threading.Lock()

    # --- content a test changes -----------------------------------------------------------

    def _id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def add(self, title: str, body: str = "<p>text</p>", *, parent: str | None = None, when: str = "") -> Content:
        page = Content(self._id(), title, body, parent, when=when or "2024-05-02T10:15:30.000Z")
        self.pages[page.id] = page
        return page

    def edit(self, page_id: str, *, body: str | None = None, title: str | None = None, parent: str = "") -> Content:
        """A new version of the page (renaming and moving make one too, as in Confluence)."""
        page = self.pages[page_id]
        if body is not None:
            page.body = body
        if title is not None:
            page.title = title
        if parent != "":
            page.parent = parent or None
        page.version += 1
        page.when = f"2024-05-{2 + page.version:02d}T08:00:00.000+02:00"
        return page

    def delete(self, page_id: str) -> None:
        del self.pages[page_id]

    def attach(self, page_id: str, title: str, data: bytes, media_type: str = "application/pdf") -> Attachment:
        attachment = Attachment(f"att{self._id()}", title, data, media_type)
        self.pages[page_id].attachments.append(attachment)
        return attachment

    # --- server ---------------------------------------------------------------------------

    @property
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler  # defined below, with the answers

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.context}"

    # --- answers --------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if self.username:
            expected = "Basic " + base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
        else:
            expected = f"Bearer {self.token}"
        return header == expected

    def ancestors(self, page: Content) -> list[Content]:
        chain: list[Content] = []
        parent = page.parent
        while parent is not None and parent in self.pages:
            chain.insert(0, self.pages[parent])  # root first, as Confluence lists them
            parent = self.pages[parent].parent
        return chain

    @property
    def base(self) -> str:
        return self.public_url or self.url

    def links(self) -> dict[str, str]:
        return {"base": self.base, "context": self.context}

    def brief(self, page: Content) -> dict[str, Any]:
        return {
            "id": page.id,
            "type": "page",
            "status": "current",
            "title": page.title,
            "_links": {
                "webui": f"/display/{self.space}/{quote_plus(page.title)}",
                "tinyui": f"/x/{page.id}",
                "self": f"{self.base}/rest/api/content/{page.id}",
            },
            "_expandable": {"container": f"/rest/api/space/{self.space}", "space": f"/rest/api/space/{self.space}"},
        }

    def content(self, page: Content, expand: set[str]) -> dict[str, Any]:
        record = self.brief(page)
        if "version" in expand:
            record["version"] = {
                "by": {"type": "known", "username": "admin", "userKey": "8a7f8089", "displayName": "Admin"},
                "when": page.when,
                "message": "",
                "number": page.version,
                "minorEdit": False,
                "hidden": False,
            }
        if "ancestors" in expand:
            record["ancestors"] = [self.brief(a) for a in self.ancestors(page)]
        if "body.storage" in expand:
            record["body"] = {
                "storage": {
                    "value": page.body,
                    "representation": "storage",
                    "_expandable": {"content": f"/rest/api/content/{page.id}"},
                }
            }
        return record

    def attachment(self, page: Content, item: Attachment) -> dict[str, Any]:
        name = quote(item.title)
        return {
            "id": item.id,
            "type": "attachment",
            "status": "current",
            "title": item.title,
            "metadata": {"mediaType": item.media_type, "comment": ""},
            "extensions": {"mediaType": item.media_type, "fileSize": len(item.data), "comment": ""},
            "version": {"by": {"type": "known", "username": "admin"}, "when": item.when, "number": item.version},
            "_links": {
                "webui": f"/pages/viewpageattachments.action?pageId={page.id}&preview=%2F{page.id}%2F{name}",
                "download": f"/download/attachments/{page.id}/{name}?version={item.version}&api=v2",
                "self": f"{self.base}/rest/api/content/{item.id}",
            },
        }

    def paged(self, path: str, query: dict[str, str], results: list[dict[str, Any]]) -> dict[str, Any]:
        start = int(query.get("start") or 0)
        limit = min(int(query.get("limit") or 25), self.page_size)
        chunk = results[start : start + limit]
        links = {"self": f"{self.base}{path}?{urlencode(query)}", **self.links()}
        if start + limit < len(results):
            links["next"] = f"{path}?{urlencode({**query, 'limit': limit, 'start': start + limit})}"
        return {"results": chunk, "start": start, "limit": limit, "size": len(chunk), "_links": links}


def _error(status: int, message: str, reason: str) -> dict[str, Any]:
    data = {"authorized": status != 401, "valid": True, "errors": [], "successful": False}
    return {"statusCode": status, "data": data, "message": message, "reason": reason}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: ConfluenceStandin

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        wiki = self.standin
        wiki.requests.append(Seen("GET", self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        if not parts.path.startswith(wiki.context + "/"):
            send_json(self, 404, _error(404, "Not found", "Not Found"))
            return
        path = unquote(parts.path[len(wiki.context) :])
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if not wiki.authorized(self.headers.get("Authorization")):
            send_json(self, 401, _error(401, "This request requires authentication", "Unauthorized"))
            return
        if path in wiki.fail:
            send_json(self, wiki.fail[path], _error(wiki.fail[path], "Failing on purpose", "Error"))
            return
        with wiki._lock:
            self._answer(wiki, path, query)

    def _answer(self, wiki: ConfluenceStandin, path: str, query: dict[str, str]) -> None:
        segments = path.strip("/").split("/")
        expand = set((query.get("expand") or "").split(","))
        if segments[:3] == ["rest", "api", "space"] and len(segments) == 4:
            if segments[3] != wiki.space:
                send_json(self, 404, _error(404, f"No space with key : {segments[3]}", "Not Found"))
                return
            links = {"webui": f"/display/{wiki.space}", "self": f"{wiki.base}{path}", **wiki.links()}
            send_json(self, 200, {"id": 98305, "key": wiki.space, "name": "Knowledge base", "type": "global",
                                  "status": "current", "_links": links})  # fmt: skip
        elif segments == ["rest", "api", "content"]:
            pages = [p for p in sorted(wiki.pages.values(), key=lambda p: int(p.id))]
            if query.get("spaceKey") != wiki.space or query.get("type", "page") != "page":
                pages = []
            if "title" in query:
                pages = [p for p in pages if p.title == query["title"]]
            send_json(self, 200, wiki.paged(path, query, [wiki.content(p, expand) for p in pages]))
        elif segments[:3] == ["rest", "api", "content"] and len(segments) in (4, 6):
            page = wiki.pages.get(segments[3])
            if page is None:
                message = f"No content found with id: ContentId{{id={segments[3]}}}"
                send_json(self, 404, _error(404, message, "Not Found"))
            elif len(segments) == 4:
                send_json(self, 200, {**wiki.content(page, expand), "_links": {**wiki.brief(page)["_links"],
                                                                                 **wiki.links()}})  # fmt: skip
            elif segments[4:] == ["child", "attachment"]:
                records = [wiki.attachment(page, item) for item in page.attachments]
                send_json(self, 200, wiki.paged(path, query, records))
            else:
                send_json(self, 404, _error(404, "Not found", "Not Found"))
        elif segments[:2] == ["download", "attachments"] and len(segments) == 4:
            page = wiki.pages.get(segments[2])
            item = next((a for a in page.attachments if a.title == segments[3]), None) if page else None
            if item is None:
                send_json(self, 404, _error(404, "Not found", "Not Found"))
                return
            self.send_response(200)
            self.send_header("Content-Type", item.media_type)
            self.send_header("Content-Length", str(len(item.data)))
            self.end_headers()
            self.wfile.write(item.data)
        else:
            send_json(self, 404, _error(404, "Not found", "Not Found"))
