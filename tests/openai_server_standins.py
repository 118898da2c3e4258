"""Stand-ins for vLLM, Text Generation Inference and SGLang: none of them runs without a GPU.

One small HTTP server plays whichever `flavour` a test names, in the shapes read from each
server's own source (the paths below are in their repositories):
- "vllm": /v1/models lists the served names; a chat request for any other model is refused
  with 404 {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
  "param": "model", "code": 404}} (OpenAIServing._check_model, vllm/entrypoints/openai/engine/
  serving.py); a prompt over the context is refused before streaming with 400 and "This
  model's maximum context length is ..." (_validate_input); errors during generation are sent
  in the stream as {"error": {...}} then [DONE] (create_streaming_error_response); --api-key
  guards every /v1 path with 401 {"error": "Unauthorized"} and leaves /health open
  (AuthenticationMiddleware, vllm/entrypoints/openai/server_utils.py).
- "vllm-legacy": vLLM before ErrorInfo: HTTP errors {"object": "error", "message", "type",
  "param", "code"}, that object under "error" in the stream (vllm/entrypoints/openai/protocol.py).
- "tgi": the model name is ignored and /v1/models lists the model id, open even with --api-key,
  which refuses generation with a bare 401 (router/src/server.rs); HTTP errors are {"error",
  "error_type"} (ErrorResponse, router/src/lib.rs); in a chat stream, errors, input validation
  included, are {"error": {"message", "http_status_code": 422}} (into_openai_event,
  router/src/infer/mod.rs); "`inputs` tokens + `max_new_tokens` must be <= N" (validation.rs).
- "tgi-legacy": TGI before 2.4.1, which sent {"error", "error_type"} in the stream too.
- "sglang": the model name is ignored; HTTP errors {"object": "error", ...} and in the stream
  that object under "error" (python/sglang/srt/entrypoints/openai/serving_base.py); a prompt
  over the context is refused in the stream with "The input (N tokens) is longer than the
  model's context length (M tokens)." (tokenizer_manager.py); --api-key guards all but /health
  with 401 {"error": "Unauthorized"}.
All of them stream OpenAI chat chunks and, when asked with stream_options.include_usage (or,
for vLLM, started with --enable-force-include-usage), a last chunk whose choices are empty and
whose usage counts the tokens, then `data: [DONE]`. A token here is a word.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from tests.standins import loopback_server, send_json

FLAVOURS = ("vllm", "vllm-legacy", "tgi", "tgi-legacy", "sglang")


@dataclass
class ServerBehaviour:
    flavour: str = "vllm"
    served: list[str] = field(default_factory=lambda: ["standin-model"])
    tokens: list[str] = field(default_factory=lambda: ["Backups ", "run ", "nightly."])
    api_key: str | None = None  # the server's --api-key
    context: int | None = None  # the model's context in tokens; None: unbounded
    force_usage: bool = False  # vLLM's --enable-force-include-usage
    # After this many tokens, an error event with this message, as the flavour sends one.
    fail_after: int | None = None
    failure: str = "Request failed during generation: CUDA error: an illegal memory access was encountered"
    # Answer every chat request with this HTTP status and message, in the flavour's shape.
    status: int = 200
    message: str = "failing on purpose"
    # What it saw: {"method", "path", "authorization", "body"} per request; whether it sent usage.
    requests: list[dict] = field(default_factory=list)
    usage_sent: bool = False

    def __post_init__(self) -> None:
        assert self.flavour in FLAVOURS, self.flavour

    @property
    def family(self) -> str:
        return self.flavour.removesuffix("-legacy")

    @property
    def chats(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]


def _handler(b: ServerBehaviour):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked event streams, as the servers send them

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._record(None)
            if self.path == "/health":
                self._empty(200)
            elif self.path == "/v1/models":
                if b.family != "tgi" and not self._authorized():  # TGI leaves /v1/models open
                    return
                self._json(200, {"object": "list", "data": [self._card(name) for name in self._listed()]})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            self._record(body)
            if self.path != "/v1/chat/completions":
                self._json(404, {"detail": "Not Found"})
                return
            if not self._authorized():
                return
            if b.family == "vllm" and body.get("model") and body["model"] not in b.served:
                self._error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", param="model")
                return
            if b.status != 200:
                self._error(b.status, b.message, self._kind(b.status))
                return
            prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            too_long = self._too_long(prompt, int(body.get("max_tokens") or 0))
            if too_long and b.family == "vllm":  # vLLM checks before it streams
                self._error(400, too_long, "BadRequestError", param="input_tokens")
                return
            self._stream(body, prompt, too_long)

        # --- the stream ------------------------------------------------------------------

        def _stream(self, body: dict, prompt: int, too_long: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if too_long:  # TGI and SGLang find it while streaming
                self._event(self._stream_error(too_long, "validation" if b.family == "tgi" else "BadRequestError"))
                self._done()
                return
            model = b.served[0] if b.family == "tgi" else body.get("model") or b.served[0]
            sent = 0
            for i, token in enumerate(b.tokens):
                if b.fail_after is not None and i == b.fail_after:
                    self._event(self._stream_error(b.failure, "generation"))
                    self._done()
                    return
                self._event(
                    self._chunk(model, {"role": "assistant", "content": token} if i == 0 else {"content": token})
                )
                sent += 1
            self._event(self._chunk(model, {}, finish="stop"))
            if b.force_usage or (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}
                self._event({**self._chunk(model, None), "choices": [], "usage": usage})
                b.usage_sent = True
            self._done()

        def _chunk(self, model: str, delta: dict | None, finish: str | None = None) -> dict:
            chunk = {"id": "" if b.family == "tgi" else "chatcmpl-standin", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}  # fmt: skip
            if b.family == "tgi":
                chunk["system_fingerprint"] = "3.3.7-sha-standin"
            if delta is not None:
                chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            return chunk

        def _stream_error(self, message: str, kind: str) -> dict:
            if b.flavour == "tgi":
                return {"error": {"message": message, "http_status_code": 422}}
            if b.flavour == "tgi-legacy":
                return {"error": message, "error_type": kind}
            return {"error": self._error_object(message, "InternalServerError" if kind == "generation" else kind,
                                                500 if kind == "generation" else 400)}  # fmt: skip

        def _event(self, payload: dict) -> None:
            self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())

        def _done(self) -> None:
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        # --- shapes --------------------------------------------------------------------

        def _listed(self) -> list[str]:
            return b.served[:1] if b.family == "tgi" else b.served

        def _card(self, name: str) -> dict:
            if b.family == "tgi":
                return {"id": name, "object": "model", "created": 0, "owned_by": name}
            return {"id": name, "object": "model", "created": int(time.time()), "owned_by": b.family,
                    "root": name, "max_model_len": b.context}  # fmt: skip

        def _error_object(self, message: str, kind: str, code: int, param: str | None = None) -> dict:
            if b.flavour == "vllm":
                return {"message": message, "type": kind, "param": param, "code": code}
            return {"object": "error", "message": message, "type": kind, "param": param, "code": code}

        def _error(self, status: int, message: str, kind: str, param: str | None = None) -> None:
            if b.family == "tgi":
                self._json(status, {"error": message, "error_type": kind})
            elif b.flavour == "vllm":
                self._json(status, {"error": self._error_object(message, kind, status, param)})
            else:
                self._json(status, self._error_object(message, kind, status, param))

        def _kind(self, status: int) -> str:
            if b.family == "tgi":  # InferError::error_type by its status (router/src/server.rs)
                return {422: "validation", 424: "generation", 429: "overloaded"}.get(status, "incomplete_generation")
            return HTTPStatus(status).phrase  # as vLLM's http_exception_handler names it

        def _too_long(self, prompt: int, max_tokens: int) -> str:
            c = b.context
            if c is None:
                return ""
            if b.family == "vllm" and prompt >= c:
                return (f"This model's maximum context length is {c} tokens. However, your request has {prompt} "
                        "input tokens. Please reduce the length of the input messages.")  # fmt: skip
            if b.family == "vllm" and prompt + max_tokens > c:
                return (f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                        f"context length is {c} tokens and your request has {prompt} input tokens ({max_tokens} > "
                        f"{c} - {prompt}).")  # fmt: skip
            if b.family == "tgi" and prompt + max_tokens > c:
                return (f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {c}. Given: {prompt} "
                        f"`inputs` tokens and {max_tokens} `max_new_tokens`")  # fmt: skip
            if b.family == "sglang" and prompt >= c:
                return f"The input ({prompt} tokens) is longer than the model's context length ({c} tokens)."
            if b.family == "sglang" and prompt + max_tokens >= c:
                return (f"Requested token count exceeds the model's maximum context length of {c} tokens. You "
                        f"requested a total of {prompt + max_tokens} tokens: {prompt} tokens from the input messages "
                        f"and {max_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                        "messages or the completion to fit within the limit.")  # fmt: skip
            return ""

        # --- plumbing ------------------------------------------------------------------

        def _authorized(self) -> bool:
            if b.api_key is None or self.headers.get("Authorization") == f"Bearer {b.api_key}":
                return True
            if b.family == "tgi":
                self._empty(401)  # axum's bare StatusCode::UNAUTHORIZED
            else:
                self._json(401, {"error": "Unauthorized"})
            return False

        def _record(self, body: dict | None) -> None:
            b.requests.append({"method": self.command, "path": self.path, "body": body,
                               "authorization": self.headers.get("Authorization")})  # fmt: skip

        def _json(self, status: int, payload) -> None:
            send_json(self, status, payload)

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def model_server_standin(behaviour: ServerBehaviour) -> Iterator[str]:
    """Serve the stand-in on a free local port; yields its base URL."""
    with loopback_server(_handler(behaviour)) as url:
        yield url
