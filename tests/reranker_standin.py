"""A stand-in reranker server: no reranker model installs offline here, so this plays one.

It answers in the documented shapes of the two APIs kb speaks:
- Text Embeddings Inference: `POST /rerank` {"query", "texts", ...} → [{"index", "score"}]
  sorted by score, best first;
- the Cohere/Jina shape served by vLLM and others: `POST /v1/rerank` {"model", "query",
  "documents", "top_n"} → {"id", "model", "usage", "results": [{"index",
  "relevance_score", "document": {"text"}}]} best first, 404 for a model it does not serve
  (as vLLM answers).
Its relevance is whatever function the test gives it (a stand-in has no model to judge
with); it records every request, and can fail on demand (an HTTP status, a delay, a body
of the wrong shape).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.standins import loopback_server, send_json


@dataclass
class RerankerBehaviour:
    relevance: Callable[[str, str], float] = lambda query, text: 0.0
    served_model: str = "standin-reranker"
    status: int = 200
    delay: float = 0.0
    wrong_shape: bool = False
    requests: list[dict] = field(default_factory=list)


def _handler(behaviour: RerankerBehaviour):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # TEI /health, /info
            self._json(200, {"model_id": behaviour.served_model})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            behaviour.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            time.sleep(behaviour.delay)
            if behaviour.status != 200:
                self._json(behaviour.status, {"error": "failing on purpose", "error_type": "standin"})
                return
            if self.path == "/rerank":
                texts = body["texts"]
                ranked = self._ranked(body["query"], texts)
                answer = [{"index": i, "score": s} for i, s in ranked]
            elif self.path == "/v1/rerank":
                if body.get("model") != behaviour.served_model:
                    self._json(404, {"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                                     "type": "NotFoundError", "code": 404})  # fmt: skip
                    return
                texts = body["documents"]
                ranked = self._ranked(body["query"], texts)[: body.get("top_n") or len(texts)]
                answer = {
                    "id": "rerank-standin", "model": behaviour.served_model,
                    "usage": {"total_tokens": sum(len(t.split()) for t in texts)},
                    "results": [{"index": i, "relevance_score": s, "document": {"text": texts[i]}} for i, s in ranked],
                }  # fmt: skip
            else:
                self._json(404, {"error": "no such route"})
                return
            if behaviour.wrong_shape:
                answer = {"scores": [0.5] * len(texts)}
            self._json(200, answer)

        def _ranked(self, query: str, texts: list[str]) -> list[tuple[int, float]]:
            scored = [(i, float(behaviour.relevance(query, t))) for i, t in enumerate(texts)]
            return sorted(scored, key=lambda item: -item[1])

        def _json(self, status: int, payload) -> None:
            send_json(self, status, payload)

    return Handler


@contextmanager
def reranker_standin(behaviour: RerankerBehaviour) -> Iterator[str]:
    """Serve the stand-in on a free local port; yields its base URL."""
    with loopback_server(_handler(behaviour)) as url:
        yield url
