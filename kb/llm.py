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
from huggingface_hub import AsyncInferenceClient, InferenceClient, set_async_client_factory
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

try:  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
    import httpx2 as http
except ImportError:  # pragma: no cover
    import httpx as http

logger = logging.getLogger(__name__)


class ModelServerError(Exception):
    """The model server could not give an answer; str() says what a person can do."""


def _friendly(exc: BaseException) -> ModelServerError:
    url = settings.TGI_URL
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "HF_HUB_OFFLINE is set, which stops huggingface_hub from reaching the model server: unset it."
    elif isinstance(exc, http.TimeoutException | TimeoutError):
        msg = (
            f"The model server at {url} did not answer within {settings.KB_LLM_TIMEOUT:g} s. "
            "It may be overloaded; try again in a moment."
        )
    elif isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        msg = f"The model server at {url} answered with an error (HTTP {status}). Try again, or tell your operator."
    elif isinstance(exc, http.ConnectError | ConnectionError):
        msg = f"The model server at {url} cannot be reached. Ask your operator to start it (make llm)."
    elif isinstance(exc, http.HTTPError):
        msg = f"The connection to the model server at {url} broke off ({type(exc).__name__})."
    else:
        msg = f"The model server at {url} failed: {type(exc).__name__}."
    logger.warning("model server error: %r", exc)
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
