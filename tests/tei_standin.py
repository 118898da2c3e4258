"""A stand-in for Text Embeddings Inference (TEI) on a GPU server, which no machine here runs.

It answers TEI's documented `POST /embed` ({"inputs": [...], "normalize": true, "truncate":
false} -> one vector per input, a JSON array of arrays) after a delay that models the server's
time (`latency` per request plus `per_text` per input), and records when each request came
and went, so tests can see what kb did while it waited. The vectors are unit vectors derived
from each text's hash: the same text always gets the same vector.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np

from tests.standins import LoopbackStandin, send_json


class _TEIHandler(BaseHTTPRequestHandler):
    standin: TEIStandin

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        started = time.monotonic()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/embed" or not isinstance(body.get("inputs"), list):
            send_json(self, 404, {"error": "Not found", "error_type": "NotFound"})
            return
        texts = body["inputs"]
        time.sleep(self.standin.latency + self.standin.per_text * len(texts))
        send_json(self, 200, [self.standin.vector(t) for t in texts])
        with self.standin.lock:
            self.standin.requests.append((started, time.monotonic(), len(texts)))


class TEIStandin(LoopbackStandin):
    handler_class = _TEIHandler

    def __init__(self, *, dim: int = 384, latency: float = 0.0, per_text: float = 0.0) -> None:
        self.dim, self.latency, self.per_text = dim, latency, per_text
        self.requests: list[tuple[float, float, int]] = []  # (came, answered, texts), time.monotonic()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def vector(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        v = np.random.default_rng(seed).standard_normal(self.dim)
        return (v / np.linalg.norm(v)).tolist()


def main() -> None:
    """Serve the stand-in in a process of its own (a benchmark's server must not share its GIL):

    python -m tests.tei_standin LATENCY PER_TEXT   -> prints its URL, then serves until killed.
    """
    import sys

    standin = TEIStandin(latency=float(sys.argv[1]), per_text=float(sys.argv[2])).start()
    print(standin.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
