"""The optional reranking stage: a cross-encoder server re-orders the best fused passages.

Off unless KB_RERANK_URL is set (no reranker model installs offline here). Two request
shapes are spoken, chosen by the URL's path or KB_RERANK_API:
- Text Embeddings Inference, `POST /rerank` with {"query", "texts", "truncate"}, answering
  [{"index", "score"}, ...];
- the Cohere/Jina shape that vLLM, Infinity and others serve at `POST /v1/rerank`, with
  {"model", "query", "documents", "top_n"}, answering {"results": [{"index",
  "relevance_score"}, ...]}. vLLM answers 404 to a model name it does not serve, so
  KB_RERANK_MODEL is always sent.
A reranker that is down, slow or answers nonsense costs nothing but its timeout: search
keeps the fused order, logs why, and says so in the result (`reranked` False).
"""

from __future__ import annotations

import logging
import math
from urllib.parse import urlsplit

import httpx
from django.conf import settings

logger = logging.getLogger(__name__)


class RerankError(Exception):
    """The reranker gave no usable answer; str() says why, without the passages' text."""


def api_of(url: str, configured: str = "auto") -> str:
    """"tei" or "cohere": KB_RERANK_API if set, else from the URL (a path ending in /v1/rerank is Cohere's)."""
    if configured in ("tei", "cohere"):
        return configured
    try:
        path = urlsplit(url).path
    except ValueError:  # a malformed URL: the request says so, as a RerankError
        return "tei"
    return "cohere" if path.rstrip("/").endswith("/v1/rerank") else "tei"


def _request(api: str, query: str, texts: list[str]) -> dict:
    if api == "tei":
        return {"query": query, "texts": texts, "truncate": True, "raw_scores": False}
    return {"model": settings.KB_RERANK_MODEL, "query": query, "documents": texts, "top_n": len(texts)}


def _scores(api: str, body, count: int) -> list[float]:
    """One score per text, in the order sent, from either answer shape; RerankError if it does not fit."""
    try:
        rows = body if api == "tei" else body["results"]
        key = "score" if api == "tei" else "relevance_score"
        scores: list[float | None] = [None] * count
        for row in rows:
            index, score = int(row["index"]), float(row[key])
            if not 0 <= index < count or not math.isfinite(score):
                raise ValueError(f"index {index} or score {score} out of range")
            scores[index] = score
    except (KeyError, TypeError, ValueError) as exc:
        raise RerankError(f"the reranker's answer does not have the {api} shape ({exc})") from None
    if any(s is None for s in scores):
        raise RerankError(f"the reranker scored {sum(s is not None for s in scores)} of {count} passages")
    return scores  # type: ignore[return-value]


def scores(query: str, texts: list[str]) -> list[float]:
    """The reranker's relevance of each text to the query, in the order given."""
    url = settings.KB_RERANK_URL
    api = api_of(url, settings.KB_RERANK_API)
    headers = {"Authorization": f"Bearer {settings.KB_RERANK_TOKEN}"} if settings.KB_RERANK_TOKEN else {}
    try:
        response = httpx.post(url, json=_request(api, query, texts), headers=headers,
                              timeout=settings.KB_RERANK_TIMEOUT)  # fmt: skip
    except httpx.TimeoutException:
        raise RerankError(f"the reranker at {url} did not answer within {settings.KB_RERANK_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise RerankError(f"the reranker at {url} cannot be reached ({type(exc).__name__})") from None
    except httpx.InvalidURL:  # not an HTTPError: a typo in KB_RERANK_URL must not break search
        raise RerankError(f"KB_RERANK_URL is not a valid URL: {url!r}") from None
    if response.status_code != 200:
        raise RerankError(f"the reranker at {url} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise RerankError(f"the reranker at {url} answered something other than JSON") from None
    return _scores(api, body, len(texts))


def enabled() -> bool:
    return bool(settings.KB_RERANK_URL)


def rerank(query: str, items: list, text_of) -> tuple[list, list[float] | None]:
    """`items` best first by the reranker, with their scores; unchanged with None when it fails."""
    if not items:
        return items, None
    try:
        found = scores(query, [text_of(item) for item in items])
    except RerankError as exc:
        logger.warning("reranking skipped: %s", exc)
        return items, None
    order = sorted(range(len(items)), key=lambda i: -found[i])  # stable: ties keep the fused order
    return [items[i] for i in order], [found[i] for i in order]
