"""The one client of the model server: vLLM in production, llama.cpp's server locally.

vLLM, Text Generation Inference, SGLang and llama.cpp all speak the OpenAI-style chat API that
huggingface_hub's InferenceClient uses, so the same code streams from each. They differ in how
they say that something went wrong; `_server_error` reads each one's shapes. Failures become
ModelServerError with a message a person can act on; the server's own words, and what an
operator should change, go to the log.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import certifi
from django.conf import settings
from django.core.cache import cache
from huggingface_hub import AsyncInferenceClient, InferenceClient, set_async_client_factory
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, TextGenerationError, UnknownError

try:  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
    import httpx2 as http
except ImportError:  # pragma: no cover
    import httpx as http

logger = logging.getLogger(__name__)


class ModelServerError(Exception):
    """The model server could not give an answer; str() says what a person can do."""


# What a reader is told when the model server cannot be reached; an operator finds why in the log.
OFFLINE = "The model server is offline, so there is no written answer; the passages below were found for your question."
TOO_LONG = (
    "The question, the earlier turns and the passages found for it are too long for the model to read at once. "
    "Try a shorter question or a new conversation, or tell your operator."
)
BUSY = "The model server is busy. Try again in a moment."
BROKE_OFF_WITH_ERROR = (
    "The model server stopped with an error before the answer was finished. Try again, or tell your operator."
)


# --- What the server said went wrong --------------------------------------------------------


@dataclass(frozen=True)
class ServerError:
    """An error the model server reported, in whichever of the servers' shapes it came."""

    status: int | None  # the HTTP status; None for an error sent inside the event stream
    message: str
    kind: str  # the server's own error type ("NotFoundError", "validation", ...), or ""


class _ErrorEvent(Exception):
    """An error object sent as a stream event without the "error" key huggingface_hub looks for."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(error.message)
        self.error = error


def _payload_error(payload) -> tuple[str, str] | None:
    """(message, type) from an error body in any of the servers' shapes; None if it is none of them.

    Read from the servers' own source:
    - vLLM: {"error": {"message", "type", "param", "code"}} for HTTP errors and, the same object
      whole, as a stream event (ErrorResponse and ErrorInfo in
      vllm/entrypoints/openai/engine/protocol.py; OpenAIServing.create_error_response and
      create_streaming_error_response in vllm/entrypoints/openai/engine/serving.py). Older vLLM
      answered {"object": "error", "message", "type", "param", "code"} over HTTP and sent that
      object under "error" in the stream (vllm/entrypoints/openai/protocol.py, serving_engine.py).
    - SGLang: the older vLLM shapes, both (create_error_response and
      create_streaming_error_response in python/sglang/srt/entrypoints/openai/serving_base.py).
    - TGI: {"error": "text", "error_type": "validation" | "generation" | "overloaded" | ...} for
      HTTP errors (ErrorResponse in router/src/lib.rs, `From<InferError>` in router/src/server.rs);
      inside a chat stream {"error": {"message", "http_status_code"}} since 2.4.1
      (InferError::into_openai_event in router/src/infer/mod.rs), the HTTP shape before it.
    - vLLM's and SGLang's --api-key refusal, {"error": "Unauthorized"} (AuthenticationMiddleware
      in vllm/entrypoints/openai/server_utils.py; add_api_key_middleware in SGLang's
      python/sglang/srt/utils); TGI's has no body. FastAPI's own errors: {"detail": ...}.
    """
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error), str(error.get("type") or "")
    if isinstance(error, str):
        return error, str(payload.get("error_type") or "")
    if payload.get("object") == "error":
        return str(payload.get("message") or ""), str(payload.get("type") or "")
    if "detail" in payload:
        return str(payload["detail"]), ""
    return None


def _response_error(response) -> tuple[str, str]:
    try:
        body = response.content
    except http.ResponseNotRead:  # an async stream whose body could not be read: the status still says much
        return "", ""
    text = body.decode(errors="replace").strip()[:500]
    try:
        said = _payload_error(json.loads(body))
    except ValueError:
        said = None
    return said or (text, "")


def _server_error(exc: BaseException) -> ServerError | None:
    """What the server said, from huggingface_hub's exception or kb's own; None for a failure with no word from it."""
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        return ServerError(exc.response.status_code, *_response_error(exc.response))
    if isinstance(exc, TextGenerationError):
        # huggingface_hub raises one for a stream event with an "error" key: a TGI text with its
        # error_type turned into the class, or anyone's error object as UnknownError's argument.
        detail = exc.args[0] if exc.args else ""
        kind = "" if isinstance(exc, UnknownError) else type(exc).__name__
        message, said_kind = _payload_error({"error": detail}) or (str(detail), "")
        return ServerError(None, message, said_kind or kind)
    if isinstance(exc, _ErrorEvent):
        return exc.error
    return None


def _status(exc: BaseException) -> int | None:
    said = _server_error(exc)
    return said.status if said is not None else None


# How each server words a prompt that does not fit the model's context:
# - vLLM: "This model's maximum context length is N tokens. However, your request has M input
#   tokens. ..." and "'max_tokens' or 'max_completion_tokens' is too large: ... This model's
#   maximum context length is N tokens ..." (OpenAIServing._validate_input, engine/serving.py);
# - SGLang: "The input (M tokens) is longer than the model's context length (N tokens)." and
#   "Requested token count exceeds the model's maximum context length of N tokens. ..."
#   (TokenizerManager._validate_one_request, python/sglang/srt/managers/tokenizer_manager.py);
# - TGI: "Input validation error: `inputs` tokens + `max_new_tokens` must be <= N. ..." and
#   "... `inputs` must have less than N tokens. ..." (ValidationError, router/src/validation.rs);
# - llama-cpp-python: "Requested tokens (M) exceed context window of N"; llama.cpp's own server:
#   "the request exceeds the available context size".
_CONTEXT_TOO_LONG = re.compile(r"context (length|window|size)|`inputs` (tokens|must have less than)", re.IGNORECASE)


def _tell(said: ServerError, url: str, offered: str) -> str:
    """Log what the server said and what to change; return what the reader is told."""
    where = f"HTTP {said.status}" if said.status else "an error event in its stream"
    detail = f"{said.kind}: {said.message}" if said.kind else said.message or "(no message)"
    if _CONTEXT_TOO_LONG.search(said.message):
        logger.warning(
            "model server at %s refused the prompt as longer than the model's context (%s, %s): raise the "
            "server's context length (vLLM --max-model-len, TGI --max-total-tokens, SGLang --context-length) or "
            "lower KB_CONTEXT_TOKENS, KB_HISTORY_TURNS or KB_LLM_MAX_TOKENS", url, where, detail,
        )  # fmt: skip
        return TOO_LONG
    if said.status in (401, 403):
        logger.warning("model server at %s refused kb's credentials (%s, %s): set KB_LLM_API_KEY to the "
                       "server's --api-key", url, where, detail)  # fmt: skip
    elif said.status == 404:
        logger.warning("model server at %s answered %s (%s); %s. Set KB_LLM_MODEL to a served name (vLLM: "
                       "--served-model-name), or leave it empty for the first one listed", url, where, detail,
                       offered)  # fmt: skip
    elif said.status in (429, 503) or "overload" in said.kind.lower():
        logger.warning("model server at %s is overloaded (%s, %s)", url, where, detail)
        return BUSY
    elif said.status is None:
        logger.warning("model server at %s sent %s: %s", url, where, detail)
        return BROKE_OFF_WITH_ERROR
    else:
        logger.warning("model server at %s answered %s: %s", url, where, detail)
    return f"The model server answered with an error (HTTP {said.status}). Try again, or tell your operator."


def _friendly(exc: BaseException, *, offered: str = "") -> ModelServerError:
    """The error a reader sees: what happened and what they can do, never an address or a command.

    Where the server is and how to start it is for operators: the log says that. `offered`
    says, for a 404, which models the server lists.
    """
    url = settings.KB_LLM_URL
    said = _server_error(exc)
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
    elif said is not None:
        msg = _tell(said, url, offered)
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


# --- Which model to ask for -----------------------------------------------------------------

# KB_LLM_URL → the first model it listed, asked for while KB_LLM_MODEL is unset. Forgotten
# when the server answers 404 (it was restarted with another model), found again next time.
_discovered: dict[str, str] = {}


def _auth() -> dict[str, str]:
    key = settings.KB_LLM_API_KEY
    return {"Authorization": f"Bearer {key}"} if key else {}


def _server_root() -> str:
    return settings.KB_LLM_URL.rstrip("/").removesuffix("/v1")


def _model_ids(response) -> list[str]:
    response.raise_for_status()
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    return [str(m["id"]) for m in data or [] if isinstance(m, dict) and m.get("id")]


def served_models() -> list[str]:
    """The names the model server lists at /v1/models; raises http.HTTPError or ValueError."""
    with http.Client(timeout=MODEL_STATUS_TIMEOUT, verify=_ssl_context()) as client:
        return _model_ids(client.get(_server_root() + "/v1/models", headers=_auth()))


async def aserved_models() -> list[str]:
    """Async twin of served_models."""
    async with http.AsyncClient(timeout=MODEL_STATUS_TIMEOUT, verify=_ssl_context()) as client:
        return _model_ids(await client.get(_server_root() + "/v1/models", headers=_auth()))


def _model() -> str:
    return settings.KB_LLM_MODEL or _discovered.get(settings.KB_LLM_URL, "")


def _remember(ids: list[str]) -> None:
    if ids:
        _discovered[settings.KB_LLM_URL] = ids[0]
        logger.info("KB_LLM_MODEL is unset: kb asks the model server at %s for %r, the first model it lists",
                    settings.KB_LLM_URL, ids[0])  # fmt: skip


def _needs_discovery() -> bool:
    return not settings.KB_LLM_MODEL and settings.KB_LLM_URL not in _discovered


def _model_name() -> str:
    if _needs_discovery():
        try:
            _remember(served_models())
        except (http.HTTPError, ValueError) as exc:  # the chat request that follows says what is wrong
            logger.info("model server at %s: listing its models failed: %r", settings.KB_LLM_URL, exc)
    return _model()


async def _amodel_name() -> str:
    if _needs_discovery():
        try:
            _remember(await aserved_models())
        except (http.HTTPError, ValueError) as exc:
            logger.info("model server at %s: listing its models failed: %r", settings.KB_LLM_URL, exc)
    return _model()


def _offered(asked: str, ids: list[str]) -> str:
    listed = f"it serves {', '.join(map(repr, ids))}" if ids else "it lists no models at /v1/models"
    return f"kb asked for the model {asked!r}; {listed}"


def _forget() -> str:
    """The model asked for, forgetting it if it was discovered: the server may have been restarted with another."""
    asked = _model()
    _discovered.pop(settings.KB_LLM_URL, None)
    return asked


def _what_it_serves(exc: BaseException) -> str:
    """For a 404: which model kb asked for and which the server lists."""
    if _status(exc) != 404:
        return ""
    asked = _forget()
    try:
        return _offered(asked, served_models())
    except (http.HTTPError, ValueError) as listing:
        return f"kb asked for the model {asked!r}; listing the server's models failed too ({listing!r})"


async def _awhat_it_serves(exc: BaseException) -> str:
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        try:
            # kb's async client has no response hook that reads an error's body (see
            # _share_ssl_context), so read it here: it holds the server's message.
            await exc.response.aread()
        except (http.HTTPError, RuntimeError):
            pass
    if _status(exc) != 404:
        return ""
    asked = _forget()
    try:
        return _offered(asked, await aserved_models())
    except (http.HTTPError, ValueError) as listing:
        return f"kb asked for the model {asked!r}; listing the server's models failed too ({listing!r})"


# --- Streaming an answer --------------------------------------------------------------------


def _params(messages: list[dict], max_tokens: int | None, model: str) -> dict:
    params = {
        "messages": messages,
        "model": model,
        "stream": True,
        # vLLM, TGI and SGLang then end the stream with a chunk whose choices are empty and whose
        # usage counts the prompt's tokens (logged, for sizing --max-model-len); llama.cpp ignores it.
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens or settings.KB_LLM_MAX_TOKENS,
        "temperature": settings.KB_LLM_TEMPERATURE,
    }
    if settings.KB_LLM_FREQUENCY_PENALTY:
        # Small models loop on a paragraph or a code block; the penalty makes that less likely,
        # kb's own guard (verification.RepetitionGuard) stops what still loops.
        params["frequency_penalty"] = settings.KB_LLM_FREQUENCY_PENALTY
    return params


def _delta(chunk) -> str:
    if chunk.get("object") == "error":  # an error object sent unwrapped, which huggingface_hub parses as a chunk
        message, kind = _payload_error(dict(chunk)) or ("", "")
        raise _ErrorEvent(ServerError(None, message, kind))
    usage = getattr(chunk, "usage", None)
    if usage:
        logger.debug("model server: %s prompt tokens, %s answer tokens", getattr(usage, "prompt_tokens", "?"),
                     getattr(usage, "completion_tokens", "?"))  # fmt: skip
    choices = getattr(chunk, "choices", None) or []  # the usage chunk has none
    if not choices:
        return ""
    return getattr(choices[0].delta, "content", None) or ""


def stream_chat(messages: list[dict], *, max_tokens: int | None = None, timeout: float | None = None) -> Iterator[str]:
    """Yield the answer's text pieces as the model server produces them."""
    client = InferenceClient(base_url=settings.KB_LLM_URL, timeout=timeout or settings.KB_LLM_TIMEOUT,
                             api_key=settings.KB_LLM_API_KEY or None)  # fmt: skip
    try:
        for chunk in client.chat_completion(**_params(messages, max_tokens, _model_name())):
            piece = _delta(chunk)
            if piece:
                yield piece
    except Exception as exc:  # every failure becomes one a person can read; logged in _friendly
        raise _friendly(exc, offered=_what_it_serves(exc)) from exc


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
    client = AsyncInferenceClient(base_url=settings.KB_LLM_URL, timeout=settings.KB_LLM_TIMEOUT,
                                  api_key=settings.KB_LLM_API_KEY or None)  # fmt: skip
    try:
        stream = await client.chat_completion(**_params(messages, max_tokens, await _amodel_name()))
        async for chunk in stream:
            piece = _delta(chunk)
            if piece:
                yield piece
    except Exception as exc:  # every failure becomes one a person can read; logged in _friendly
        raise _friendly(exc, offered=await _awhat_it_serves(exc)) from exc
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            await close()


# --- Is the model server answering? (the offline banner, issue 15) ---------------------------

MODEL_STATUS_SECONDS = 10  # one check serves every page of this process for this long
# Connecting must succeed within this; a server that accepts the connection but is slow to
# answer is busy (llama.cpp answers nothing else while it generates), not offline.
MODEL_STATUS_TIMEOUT = http.Timeout(2.0, connect=2.0)
# llama.cpp's server, vLLM, TGI and SGLang list their models; vLLM, TGI and SGLang also answer
# /health, which their --api-key leaves open.
_STATUS_PATHS = ("/v1/models", "/health")
_last_online: dict[str, bool] = {}


async def _aprobe(base: str) -> bool:
    async with http.AsyncClient(timeout=MODEL_STATUS_TIMEOUT, verify=_ssl_context()) as client:
        for path in _STATUS_PATHS:
            try:
                response = await client.get(base + path, headers=_auth())
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
    url = _server_root()
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
