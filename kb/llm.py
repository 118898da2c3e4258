"""The one client of the model server (TGI in production, llama.cpp's server locally).

Both speak the OpenAI-style chat API that huggingface_hub's InferenceClient uses, so the
same code streams from either. Failures become ModelServerError with a message a person
can act on; the raw exception stays in the server log.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Iterator

import certifi
from django.conf import settings
from django.core.cache import cache
from huggingface_hub import AsyncInferenceClient, InferenceClient, set_async_client_factory
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

try:  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
    import httpx2 as http
except ImportError:  # pragma: no cover
    import httpx as http

logger = logging.getLogger(__name__)


class ModelServerError(Exception):
    """The model server could not give an answer; str() says what a person can do."""


# What a reader is told when the model server cannot be reached; an operator finds why in the log.
OFFLINE = "The model server is offline, so there is no written answer; the passages below were found for your question."


def _friendly(exc: BaseException) -> ModelServerError:
    """The error a reader sees: what happened and what they can do, never an address or a command.

    Where the server is and how to start it is for operators: the log says that.
    """
    url = settings.TGI_URL
    if isinstance(exc, OfflineModeIsEnabled):
        msg = OFFLINE
        logger.warning(
            "model server at %s: HF_HUB_OFFLINE is set, which stops huggingface_hub reaching it: unset it", url
        )
    elif isinstance(exc, http.TimeoutException | TimeoutError):
        msg = (
            f"The model server did not answer within {settings.KB_LLM_TIMEOUT:g} s. "
            "It may be overloaded; try again in a moment."
        )
        logger.warning(
            "model server at %s: no answer within %g s (KB_LLM_TIMEOUT): %r", url, settings.KB_LLM_TIMEOUT, exc
        )
    elif isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        msg = f"The model server answered with an error (HTTP {status}). Try again, or tell your operator."
        logger.warning("model server at %s answered HTTP %s: %r", url, status, exc)
    elif isinstance(exc, http.ConnectError | ConnectionError):
        msg = OFFLINE
        logger.warning("model server at %s cannot be reached (locally: make llm): %r", url, exc)
    elif isinstance(exc, http.HTTPError):
        msg = "The connection to the model server broke off. Try again in a moment."
        logger.warning("model server at %s: the connection broke off: %r", url, exc)
    else:
        msg = "The model server failed. Try again, or tell your operator."
        logger.warning("model server at %s failed: %r", url, exc)
    return ModelServerError(msg)


def _params(messages: list[dict], max_tokens: int | None) -> dict:
    params = {
        "messages": messages,
        "model": settings.TGI_MODEL,
        "stream": True,
        "max_tokens": max_tokens or settings.KB_LLM_MAX_TOKENS,
        "temperature": settings.KB_LLM_TEMPERATURE,
    }
    if settings.KB_LLM_FREQUENCY_PENALTY:
        # Small models loop on a paragraph or a code block; the penalty makes that less likely,
        # kb's own guard (verification.RepetitionGuard) stops what still loops.
        params["frequency_penalty"] = settings.KB_LLM_FREQUENCY_PENALTY
    return params


def _delta(chunk) -> str:
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return ""
    return getattr(choices[0].delta, "content", None) or ""


def stream_chat(messages: list[dict], *, max_tokens: int | None = None, timeout: float | None = None) -> Iterator[str]:
    """Yield the answer's text pieces as the model server produces them."""
    client = InferenceClient(base_url=settings.TGI_URL, timeout=timeout or settings.KB_LLM_TIMEOUT)
    try:
        for chunk in client.chat_completion(**_params(messages, max_tokens)):
            piece = _delta(chunk)
            if piece:
                yield piece
    except Exception as exc:  # every failure becomes one a person can read; logged in _friendly
        raise _friendly(exc) from exc


def complete(messages: list[dict], *, max_tokens: int | None = None, timeout: float | None = None) -> str:
    """The whole reply to a short request (a follow-up rewrite), streamed so the timeout counts per piece."""
    return "".join(stream_chat(messages, max_tokens=max_tokens, timeout=timeout))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def _async_http_client() -> http.AsyncClient:
    return http.AsyncClient(verify=_ssl_context(), follow_redirects=True, timeout=None)


@functools.cache
def _share_ssl_context() -> None:
    # Every AsyncInferenceClient opens its own httpx client (its streams close only with it),
    # and each of those loads certifi's bundle into a new SSL context: about 20 ms before
    # every answer on two cores (bench/ttft.py). One context, built once, serves them all.
    # kb is the only user of huggingface_hub's async client in its processes.
    set_async_client_factory(_async_http_client)


async def astream_chat(messages: list[dict], *, max_tokens: int | None = None) -> AsyncIterator[str]:
    """Async twin of stream_chat for the ASGI views; closing it closes the HTTP stream."""
    _share_ssl_context()
    client = AsyncInferenceClient(base_url=settings.TGI_URL, timeout=settings.KB_LLM_TIMEOUT)
    try:
        stream = await client.chat_completion(**_params(messages, max_tokens))
        async for chunk in stream:
            piece = _delta(chunk)
            if piece:
                yield piece
    except Exception as exc:  # every failure becomes one a person can read; logged in _friendly
        raise _friendly(exc) from exc
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            await close()


# --- Is the model server answering? (the offline banner, issue 15) ---------------------------

MODEL_STATUS_SECONDS = 10  # one check serves every page of this process for this long
# Connecting must succeed within this; a server that accepts the connection but is slow to
# answer is busy (llama.cpp answers nothing else while it generates), not offline.
MODEL_STATUS_TIMEOUT = http.Timeout(2.0, connect=2.0)
# llama.cpp's server, vLLM and recent TGI list their models; TGI also answers /health.
_STATUS_PATHS = ("/v1/models", "/health")
_last_online: dict[str, bool] = {}


async def _aprobe(base: str) -> bool:
    async with http.AsyncClient(timeout=MODEL_STATUS_TIMEOUT, verify=_ssl_context()) as client:
        for path in _STATUS_PATHS:
            try:
                response = await client.get(base + path)
            except (http.ReadTimeout, http.WriteTimeout, http.PoolTimeout) as exc:
                logger.info("model server check: %s%s is busy: %r", base, path, exc)
                return True
            except http.HTTPError as exc:  # refused, unreachable: another path cannot do better
                logger.info("model server check: %s%s: %r", base, path, exc)
                return False
            if response.status_code == 200:
                return True
        return False


async def amodel_server_online() -> bool:
    """Whether the model server answers now: checked at most once per MODEL_STATUS_SECONDS, shared across requests."""
    url = settings.TGI_URL.rstrip("/").removesuffix("/v1")
    key = f"kb:model-server-online:{url}"
    online = await cache.aget(key)
    if online is None:
        online = await _aprobe(url)
        await cache.aset(key, online, MODEL_STATUS_SECONDS)
        if _last_online.get(url) != online:  # operators read the changes in the log, with the URL
            _last_online[url] = online
            logger.log(logging.INFO if online else logging.WARNING,
                       "the model server at %s %s", url, "answers" if online else "does not answer")  # fmt: skip
    return online
