"""An OpenAI-compatible API over kb: `GET /v1/models`, `GET /v1/models/<id>`, `POST /v1/chat/completions`.

Any OpenAI client reaches kb with `base_url=<kb>/v1` and a personal API token as its key.
The token acts with exactly its owner's rights (kb.api.auth): a deactivated owner's token
is refused, and only collections the owner can read are ever named, listed or searched.

Models. `kb` asks every collection the owner can read; `kb/<id>` asks one collection,
`<id>` being the collection's number in kb (as in its page's address, /collections/<id>/):
stable when the collection is renamed. Each model object also carries the collection's
`name` and `description`. A collection the owner cannot read answers exactly as one that
does not exist: 404 `model_not_found`.

Chat. The last message (the user's) is the question; earlier user/assistant pairs are the
conversation's history, used as kb uses a stored conversation's turns for a follow-up (its
last KB_HISTORY_TURNS make the search query standalone and go into the prompt). System
messages are ignored: kb's own prompt fences the sources and asks for citations. The
question is recorded in a new conversation of the owner's, as kb's own JSON API does, and
answered by the same services as the pages: nothing found is said plainly without asking
the model, and the content is what the page shows (kb.api.answers), never the raw model
text. The sources are in `citations` ([{n, title, source, url}], url being kb's page of the
passage), beside the usual fields, and `kb` holds the conversation, message and status.
`max_tokens`, `temperature` and `top_p` are checked but kb's settings decide (KB_LLM_*);
`usage` is estimated (~4 characters a token): the model server's stream carries no counts.
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import functools
import json
import re
import time
from contextlib import aclosing
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from kb import answering, limits, selectors, verification
from kb.api import answers
from kb.api.auth import authenticate
from kb.models import Collection, Message
from kb.services.conversations import message_answer, message_answer_start, message_ask, message_quote

ALL_COLLECTIONS = "kb"
_COLLECTION_MODEL = re.compile(r"kb/([1-9][0-9]{0,17})")  # 18 digits: within Postgres' bigint
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# kb refuses longer questions (kb.services.conversations): an earlier one is cut to it.
_HISTORY_QUESTION_CHARS = 2000


class ApiError(Exception):
    """A refusal in OpenAI's error shape."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def response(self) -> JsonResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JsonResponse(body, status=self.status)


def _model_not_found(model: str) -> ApiError:
    shown = model if len(model) <= 100 else model[:100] + "…"
    return ApiError(f"The model `{shown}` does not exist or you do not have access to it.",
                    status=404, param="model", code="model_not_found")  # fmt: skip


def _unauthorized() -> HttpResponse:
    response = ApiError(
        "A valid kb API token is required (Authorization: Bearer <token>); create one under Account › API tokens.",
        status=401, code="invalid_api_key",
    ).response()  # fmt: skip
    response["WWW-Authenticate"] = 'Bearer realm="kb"'
    return response


def openai_endpoint(method: str):
    """The method allowed (405 otherwise), a token's owner as request.user (401 otherwise), errors as OpenAI's."""

    def decorate(view):
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method != method:
                response = ApiError(f"Use {method} on this endpoint.", status=405, code="method_not_allowed").response()
                response["Allow"] = method
                return response
            user = await sync_to_async(authenticate)(request)
            if user is None:
                return _unauthorized()
            request.user = user
            try:
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        return csrf_exempt(wrapper)

    return decorate


# --- models -------------------------------------------------------------------------------


def _model_collections(user, model: str) -> list[Collection]:
    """The collections a model id asks, read as the user may; an unreadable one is not found, like a missing one."""
    if model == ALL_COLLECTIONS:
        return list(selectors.collection_list(user=user))
    match = _COLLECTION_MODEL.fullmatch(model)
    if match is None:
        raise _model_not_found(model)
    try:
        return [selectors.collection_get(user=user, pk=int(match[1]))]
    except Http404:
        raise _model_not_found(model) from None


def _model_json(model: str, created, name: str, description: str) -> dict:
    return {"id": model, "object": "model", "created": int(created.timestamp()), "owned_by": "kb",
            "name": name, "description": description}  # fmt: skip


def _all_model_json(user, collections: list[Collection]) -> dict:
    created = min((c.created_at for c in collections), default=user.date_joined)
    return _model_json(ALL_COLLECTIONS, created, "kb: all your collections",
                       "Every collection you can read in kb, asked at once.")  # fmt: skip


def _collection_model_json(collection: Collection) -> dict:
    return _model_json(f"kb/{collection.pk}", collection.created_at, collection.name, collection.description)


def _models(user) -> dict:
    collections = list(selectors.collection_list(user=user).order_by("pk"))
    data = [_all_model_json(user, collections), *(_collection_model_json(c) for c in collections)]
    return {"object": "list", "data": data}


def _model(user, model: str) -> dict:
    collections = _model_collections(user, model)
    if model == ALL_COLLECTIONS:
        return _all_model_json(user, collections)
    return _collection_model_json(collections[0])


@openai_endpoint("GET")
async def models(request: HttpRequest) -> JsonResponse:
    return JsonResponse(await sync_to_async(_models)(request.user))


@openai_endpoint("GET")
async def model_detail(request: HttpRequest, model: str) -> JsonResponse:
    return JsonResponse(await sync_to_async(_model)(request.user, model))


# --- chat ---------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    model: str
    question: str
    history: list[answers.Turn]
    stream: bool
    include_usage: bool


def _body(request: HttpRequest) -> dict:
    try:
        data = json.loads(request.body or b"")
    except RequestDataTooBig:
        raise ApiError("The request body is too large.", status=413, code="request_too_large") from None
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise ApiError('The body must be JSON: {"model": ..., "messages": [...]}.', code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError("The body must be a JSON object.", code="invalid_json")
    return data


def _optional(data: dict, key: str, kinds: tuple[type, ...], what: str):
    value = data.get(key)
    # bool is an int in Python, never in JSON's sense of a number.
    if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise ApiError(f"'{key}' must be {what}.", param=key, code="invalid_type")
    return value


def _text(message: dict, at: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "\n".join(p["text"] for p in content)
        raise ApiError("kb reads text only: every content part must be {\"type\": \"text\", \"text\": ...}.",
                       param=f"messages.[{at}].content", code="invalid_content")  # fmt: skip
    raise ApiError("A message's content must be a string or a list of text parts.",
                   param=f"messages.[{at}].content", code="invalid_type")  # fmt: skip


def _turns(messages: list[tuple[str, str]]) -> list[answers.Turn]:
    """Earlier questions with their answers, as kb keeps a conversation's answered turns (the latest few)."""
    turns: list[answers.Turn] = []
    question: str | None = None
    for role, text in messages:
        if role == "user":
            question = text
        elif role == "assistant" and question is not None and text.strip():
            if len(question) > _HISTORY_QUESTION_CHARS:
                question = question[:_HISTORY_QUESTION_CHARS] + " …"
            turns.append(answers.Turn(question=question, answer=answers.model_words(text)))
            question = None
    return turns[-settings.KB_HISTORY_TURNS :] if settings.KB_HISTORY_TURNS > 0 else []


def _parse_chat(request: HttpRequest) -> ChatRequest:
    data = _body(request)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("Name the model: 'kb' or one of GET /v1/models.", param="model", code="invalid_type")
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError("'messages' must be a non-empty list of messages.", param="messages", code="invalid_type")
    messages = []
    for at, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in _ROLES:
            raise ApiError(f"Each message needs a role, one of {sorted(_ROLES)}.",
                           param=f"messages.[{at}].role", code="invalid_value")  # fmt: skip
        messages.append((message["role"], _text(message, at)))
    if messages[-1][0] != "user":
        raise ApiError("The last message must be the user's question.", param="messages", code="invalid_value")
    stream = _optional(data, "stream", (bool,), "true or false") or False
    options = _optional(data, "stream_options", (dict,), "an object") or {}
    include_usage = _optional(options, "include_usage", (bool,), "true or false") or False
    if _optional(data, "n", (int,), "1") not in (None, 1):
        raise ApiError("kb writes one answer a request: 'n' must be 1.", param="n", code="invalid_value")
    for key in ("max_tokens", "max_completion_tokens"):
        value = _optional(data, key, (int,), "a positive integer")
        if value is not None and value < 1:
            raise ApiError(f"'{key}' must be a positive integer.", param=key, code="invalid_value")
    for key in ("temperature", "top_p"):
        _optional(data, key, (int, float), "a number")
    return ChatRequest(model=model, question=messages[-1][1], history=_turns(messages[:-1]), stream=stream,
                       include_usage=include_usage)  # fmt: skip


def _ask(user, chat: ChatRequest) -> Message:
    """Record the question against the model's collections, exactly as the pages scope it."""
    collections = _model_collections(user, chat.model)
    try:
        message, _ = message_ask(user=user, question=chat.question, collections=collections, history=chat.history)
    except ValidationError as exc:
        raise ApiError(" ".join(exc.messages), param="messages", code="invalid_value") from None
    return message


def _usage(message: Message, sources: list[dict], history, content: str, *, asked_model: bool) -> dict:
    prompt = answers.prompt_tokens(message, sources, history, asked_model=asked_model)
    completion = answers.estimated_tokens(content)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _extension(message: Message) -> dict:
    return {"conversation": message.conversation_id, "message": message.pk, "status": message.status,
            "abstained": message.status == Message.Status.NO_ANSWER}  # fmt: skip


def _finished(request: HttpRequest, message: Message, history, *, asked_model: bool) -> dict:
    """The finished answer as shown to the reader now: content, citations, usage, kb's fields."""
    sources = selectors.message_sources(user=request.user, message=message)
    content = answers.shown_text(message, sources)
    return {
        "content": content,
        "citations": answers.citations(sources, request.build_absolute_uri),
        "usage": _usage(message, sources, history, content, asked_model=asked_model),
        "kb": _extension(message),
    }


@openai_endpoint("POST")
@limits.openai_asking
async def chat_completions(request: HttpRequest) -> HttpResponse:
    user = request.user
    chat = _parse_chat(request)
    message = await sync_to_async(_ask)(user, chat)
    sources, _, claimed = await sync_to_async(message_answer_start)(user=user, message=message)
    frame = {"id": f"chatcmpl-kb{message.pk}", "created": int(time.time()), "model": chat.model}

    def answer(checked: bool = False):
        # The client's turns, not the new conversation's (it has none): they are this question's history.
        return aclosing(message_answer(message=message, sources=sources, history=chat.history, checked=checked))

    if not chat.stream:
        await answers.answer_to_the_end(user=user, message=message, sources=sources, history=chat.history,
                                        claimed=claimed)  # fmt: skip
        done = await sync_to_async(_finished)(request, message, chat.history, asked_model=claimed)
        choice = {"index": 0, "message": {"role": "assistant", "content": done["content"], "refusal": None},
                  "logprobs": None, "finish_reason": "stop"}  # fmt: skip
        return JsonResponse({**frame, "object": "chat.completion", "choices": [choice], "usage": done["usage"],
                             "citations": done["citations"], "kb": done["kb"]})  # fmt: skip

    def chunk(delta: dict, finish_reason: str | None = None, **more) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = {**frame, "object": "chat.completion.chunk", "choices": [choice], **more}
        if chat.include_usage:
            body.setdefault("usage", None)
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        await sync_to_async(message_quote)(user=user, message=message)
        shown_sources = sources or await sync_to_async(selectors.message_sources)(user=user, message=message)
        checked = await sync_to_async(answering.checked_answer)(message, shown_sources)
        head = answers.head(message, checked)
        sent = ""

        def grown(text: str) -> str | None:
            # The content only grows at its end; a client cannot take back what it was sent.
            nonlocal sent
            if len(text) <= len(sent) or not text.startswith(sent):
                return None
            delta, sent = text[len(sent) :], text
            return chunk({"content": delta})

        if (event := grown(head)) is not None:
            yield event
        if claimed:
            decided: list[verification.Sentence] = []
            async with answer(checked=True) as pieces:
                async for piece in pieces:
                    if isinstance(piece, verification.Checked):
                        decided.append(piece.sentence)
                        text = answers.body(answers.readable_sentences(decided, shown_sources))
                        if (event := grown(answers.joined([head, text]))) is not None:
                            yield event
        await message.arefresh_from_db()
        done = await sync_to_async(_finished)(request, message, chat.history, asked_model=claimed)
        if (event := grown(done["content"])) is not None:
            yield event
        yield chunk({}, "stop", citations=done["citations"], kb=done["kb"])
        if chat.include_usage:
            usage = {**done["usage"], "completion_tokens": answers.estimated_tokens(sent)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield f"data: {json.dumps({**frame, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
