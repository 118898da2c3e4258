"""A small HTTP site on 127.0.0.1 (a random port) answering the routes a test adds: the intranet
that the web connector and the address guard are tested against."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    sleep: float = 0.0


class Site:
    """An HTTP server on 127.0.0.1 (a random port) answering the routes added to it."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) in order
        self.answers: list[tuple[str, int]] = []  # (path, status) in order
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append((self.path, dict(self.headers.items())))
                route = site.routes.get(self.path, Route(b"not found", 404, {"Content-Type": "text/plain"}))
                time.sleep(route.sleep)
                if site.not_modified(route, self.headers):  # a conditional request that matches
                    site.answers.append((self.path, 304))
                    self.send_response(304)
                    for name in ("ETag", "Last-Modified"):
                        if name in route.headers:
                            self.send_header(name, route.headers[name])
                    self.end_headers()
                    return
                site.answers.append((self.path, route.status))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.send_length and "Content-Length" not in route.headers:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except OSError:  # the client hung up on purpose (a refused body)
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server_names: list[str | None] = []  # TLS SNI the clients sent
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(
        self, path: str, body: bytes | str = b"", *, status: int = 200, content_type: str = "text/html", **kwargs
    ) -> None:
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(data, status, headers, **kwargs)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = Route(b"", status, {"Location": location})

    @staticmethod
    def not_modified(route: Route, headers) -> bool:
        """If-None-Match naming the route's ETag, or (without it) If-Modified-Since its Last-Modified."""
        if route.status != 200:
            return False
        if "If-None-Match" in headers:
            return headers["If-None-Match"] == route.headers.get("ETag")
        return "If-Modified-Since" in headers and headers["If-Modified-Since"] == route.headers.get("Last-Modified")

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
