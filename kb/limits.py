"""Limits per user, so that one person or script cannot take kb for themselves.

- A question longer than KB_MAX_QUESTION_CHARS is refused (400), before anything is searched.
- At most KB_ASK_PER_MINUTE questions and searches a user in any KB_ASK_WINDOW_SECONDS (a
  moving window: "in the last minute", not "since the minute began"); then 429 with Retry-After.
- At most KB_MAX_STREAMS_PER_USER answers of one user being written at once (429). What counts
  is answers, not readers: a message the model is writing is one, however many tabs follow it.
- At most KB_UPLOADS_PER_HOUR uploads (each POST of the upload form or of the API's upload, of
  one file or a thousand) a user in any KB_UPLOAD_WINDOW_SECONDS (429 in the API; a message on
  the upload page). Too many files in one request (KB_MAX_FILES_PER_UPLOAD, which Django
  enforces while it reads the request) gets the same kind of message through `bad_request`.

Every entry point refuses in its own shape: the pages with the form's error line (htmx) or a
plain response, /api/v1 with {"error"}, /v1 with OpenAI's error object (so the openai client
raises RateLimitError), MCP with a tool error. Entry points carry one decorator each.

Staff are not exempt: a staff member's token in a runaway script overloads the model server
just as anyone's does. A deployment that needs more raises the setting for everyone.

The counts hold across web processes: rates are counted in Redis by the `limits` library
(Flask-Limiter's), whose moving window is one Lua script a hit, so two processes cannot both
take the last place. Answers being written are counted from their rows (Message.status is
what the answering services keep, in any process) plus the asks still on their way to a row.
If Redis is unreachable the rates are not enforced (logged): kb keeps answering.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import TooManyFilesSent
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve
from django.utils import timezone
from django.utils.html import escape
from django.views import defaults
from django_htmx.http import reswap, retarget
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from mcp.server.mcpserver.exceptions import ToolError

from kb.models import Message

logger = logging.getLogger(__name__)

# An answer still "being written" this long after it was asked (or asked again) is taken for
# the leftover of a web process that died mid-answer: it must not hold one of its owner's places forever.
STALE_AFTER = timedelta(minutes=15)
# How long to suggest waiting when all of a user's answers are still being written: when the
# first ends cannot be known, and a few seconds is how long a short answer takes.
STREAMS_RETRY_SECONDS = 5
# An ask on its way to its row is counted in Redis; this long at most, should its process die.
_ASKING_TTL = 15 * 60


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, in words for a person, with its HTTP status."""

    message: str
    status: int = 429
    retry_after: int | None = None
    code: str = "rate_limit_exceeded"  # for OpenAI's error object


# --- counting -----------------------------------------------------------------------------


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2)


@functools.cache
def _limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(RedisStorage(settings.REDIS_URL, key_prefix="kb:limits", socket_timeout=2))


def _scope() -> str:
    # Several kb sites (and test runs) may share one Redis: their users' numbers overlap.
    return str(settings.DATABASES["default"]["NAME"])


def _who(user) -> str:
    # With when they joined: a database made anew (tests) numbers its users from 1 again.
    return f"{user.pk}.{int(user.date_joined.timestamp())}"


def _window_words(seconds: int) -> str:
    return {60: "minute", 3600: "hour", 86400: "day"}.get(seconds, f"{seconds} seconds")


def _wait_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


def _hit(kind: str, user, amount: int, window: int) -> int | None:
    """Count one more of `kind` for the user; None if allowed, else the seconds until a place frees."""
    item = RateLimitItemPerSecond(amount, window)
    try:
        if _limiter().hit(item, _scope(), kind, _who(user)):
            return None
        reset_at = _limiter().get_window_stats(item, _scope(), kind, _who(user)).reset_time
    except Exception as exc:  # noqa: BLE001 - a limit that cannot be counted must not stop kb
        logger.warning("limits: %s of user %s not counted, Redis failed: %s", kind, user.pk, exc)
        return None
    return max(1, math.ceil(reset_at - time.time()))


def question_refusal(question: str | None) -> Refusal | None:
    """A question over KB_MAX_QUESTION_CHARS, refused with the limit; None for any other."""
    if not isinstance(question, str):
        return None  # not a question at all: the view says what is wrong with it
    size, limit = len(question.strip()), settings.KB_MAX_QUESTION_CHARS
    if size <= limit:
        return None
    return Refusal(f"Questions are limited to {limit:,} characters; this one has {size:,}. Shorten it and ask again.",
                   status=400, code="string_above_max_length")  # fmt: skip


def _answers_being_written(user) -> int:
    """The user's answers pending or being written, as their rows say (in every web process).

    Not a Redis counter raised and lowered around generation: that would need hooks in the
    answering code and would drift each time a process died mid-answer; the rows are the truth.
    """
    since = timezone.now() - STALE_AFTER
    # Asked again (regenerate) bumps the conversation, not the message's created_at.
    recent = Q(created_at__gte=since) | Q(conversation__updated_at__gte=since)
    writing = Message.objects.filter(
        recent, conversation__user=user, status__in=(Message.Status.PENDING, Message.Status.STREAMING)
    )
    return writing.count()


def _asking_key(user) -> str:
    return f"kb:limits:{_scope()}:asking:{_who(user)}"


def _asking_begin(user) -> int | None:
    """Count an ask on its way to its row; the number of the user's other asks on their way (None: Redis failed)."""
    key = _asking_key(user)
    try:
        with _redis().pipeline() as pipe:
            now, _ = pipe.incr(key).expire(key, _ASKING_TTL).execute()
    except redis.RedisError as exc:
        logger.warning("limits: asks of user %s not counted, Redis failed: %s", user.pk, exc)
        return None
    return now - 1


def _asking_end(user) -> None:
    try:
        if _redis().decr(_asking_key(user)) < 0:  # expired mid-ask: never below nothing
            _redis().delete(_asking_key(user))
    except redis.RedisError:
        pass  # the key expires


def _ask_refusal(user, *, asking_others: int | None, searching: bool = False) -> Refusal | None:
    """Too many answers being written, or too many questions (and searches) in the window; else count this one."""
    if not searching:
        limit = settings.KB_MAX_STREAMS_PER_USER
        # Rows count the answers under way; Redis the asks that have no row yet (a script firing
        # fifty at once sees no rows). An ask counted by both is counted once: the larger wins,
        # so concurrent asks beside running answers can pass the limit by at most the limit.
        running = max(_answers_being_written(user), asking_others or 0)
        if running >= limit:
            return Refusal(
                f"You already have {running} answer{'s' if running != 1 else ''} being written, the most kb "
                f"writes for one person at once ({limit}); wait for one to finish or stop one, then ask again.",
                retry_after=STREAMS_RETRY_SECONDS, code="too_many_streams",
            )  # fmt: skip
    amount, window = settings.KB_ASK_PER_MINUTE, settings.KB_ASK_WINDOW_SECONDS
    wait = _hit("ask", user, amount, window)
    if wait is None:
        return None
    done = f"searched or asked {amount} times" if searching else f"asked {amount} question{'s' if amount != 1 else ''}"
    return Refusal(f"You have {done} in the last {_window_words(window)}; try again in {_wait_words(wait)}.",
                   retry_after=wait)  # fmt: skip


def _upload_refusal(user) -> Refusal | None:
    amount, window = settings.KB_UPLOADS_PER_HOUR, settings.KB_UPLOAD_WINDOW_SECONDS
    wait = _hit("upload", user, amount, window)
    if wait is None:
        return None
    return Refusal(f"You have uploaded {amount} time{'s' if amount != 1 else ''} in the last "
                   f"{_window_words(window)}; try again in {_wait_words(wait)}.", retry_after=wait)  # fmt: skip


def _too_many_files() -> Refusal:
    most = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    return Refusal(f"An upload holds at most {most:,} files; this one had more, and nothing of it was kept. "
                   "Upload them in parts, or as a ZIP archive.", status=400, code="too_many_files")  # fmt: skip


def _released(check):
    """`check` for a worker thread of its own, handing its database connection back afterwards (MCP calls)."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return run


# --- the pages ----------------------------------------------------------------------------


def _page_refusal(request: HttpRequest, refusal: Refusal, target: str) -> HttpResponse:
    """As kb.views.ask refuses a form: swapped into the form's error line under htmx, else plain.

    Under htmx the status is 422: base.html's htmx-config swaps no other 4xx into the page (a
    429 would only show kb.js's generic "kb is busy"). Retry-After is there all the same.
    """
    text = escape(refusal.message)
    if request.htmx:
        response = reswap(retarget(HttpResponse(text, status=422), target), "innerHTML")
    else:
        response = HttpResponse(text, status=refusal.status)
    if refusal.retry_after:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def asking(*, target: str = "#ask-error"):
    """For a page view that starts an answer: the question's size, answers at once, questions a minute.

    `target`: where the refusal goes under htmx; `{pk}` is the view's pk.
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            where = target.format(**kwargs)
            if refusal := question_refusal(request.POST.get("question")):
                return _page_refusal(request, refusal, where)
            others = _asking_begin(request.user)
            try:
                if refusal := _ask_refusal(request.user, asking_others=others):
                    return _page_refusal(request, refusal, where)
                return view(request, *args, **kwargs)
            finally:
                if others is not None:
                    _asking_end(request.user)

        return wrapper

    return decorate


def _upload_page_refusal(request: HttpRequest, refusal: Refusal, pk) -> HttpResponse:
    """On the upload page, as its other refusals: a message at the top of the collection's page.

    Under htmx the page reloads to show it (HX-Refresh works whatever the status, where a 4xx
    is never swapped in); without JavaScript the browser is sent back to the page.
    """
    messages.error(request, refusal.message)
    if request.htmx:
        response = HttpResponse(escape(refusal.message), status=refusal.status)
        response["HX-Refresh"] = "true"
    else:
        response = redirect("collection_detail", pk=pk)
    if refusal.retry_after:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def uploading(view):
    """For the upload page: uploads an hour."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if refusal := _upload_refusal(request.user):
            return _upload_page_refusal(request, refusal, kwargs.get("pk"))
        return view(request, *args, **kwargs)

    return wrapper


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    """handler400: too many files in one upload said in words on the upload page or in the API; else Django's.

    Django counts the files while it reads the request, which for a page's POST happens in
    the CSRF check, before any view runs: only this handler sees that refusal.
    """
    if isinstance(exception, TooManyFilesSent):
        try:
            match = resolve(request.path_info)
        except Resolver404:
            match = None
        refusal = _too_many_files()
        if match is not None and match.url_name == "api_documents_upload":
            return JsonResponse({"error": refusal.message}, status=refusal.status)
        if match is not None and match.url_name == "document_upload":
            return _upload_page_refusal(request, refusal, match.kwargs["pk"])
    return defaults.bad_request(request, exception)


# --- the JSON API (/api/v1) ---------------------------------------------------------------


def _json_refusal(refusal: Refusal) -> JsonResponse:
    response = JsonResponse({"error": refusal.message}, status=refusal.status)
    if refusal.retry_after:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def _body(request: HttpRequest):
    try:
        return json.loads(request.body or b"")
    except (ValueError, RecursionError):
        return None  # the view says what is wrong with it


def _api_question(request: HttpRequest) -> str | None:
    body = _body(request)
    return body.get("question") if isinstance(body, dict) else None


def _openai_question(request: HttpRequest) -> str | None:
    """The last message's text, as kb.api.openai_compat reads it; None when it is not well formed."""
    body = _body(request)
    chat = body.get("messages") if isinstance(body, dict) else None
    last = chat[-1] if isinstance(chat, list) and chat and isinstance(chat[-1], dict) else {}
    content = last.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    return content if isinstance(content, str) else None


def _async_asking(question_of, refuse):
    """An async API view that starts an answer, refusing with `refuse(Refusal)`."""

    def decorate(view):
        assert inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method != "POST":
                return await view(request, *args, **kwargs)
            if refusal := question_refusal(question_of(request)):
                return refuse(refusal)
            others = await sync_to_async(_asking_begin)(request.user)
            try:
                if refusal := await sync_to_async(_ask_refusal)(request.user, asking_others=others):
                    return refuse(refusal)
                return await view(request, *args, **kwargs)
            finally:
                if others is not None:
                    _asking_end(request.user)  # a local Redis call: microseconds, and no await to be cancelled at

        return wrapper

    return decorate


def api_asking(view):
    """For /api/v1/ask/ (below token_required): refusals as {"error": ...}."""
    return _async_asking(_api_question, _json_refusal)(view)


def api_uploading(view):
    """For /api/v1's upload (below token_required): uploads an hour."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if refusal := _upload_refusal(request.user):
            return _json_refusal(refusal)
        return view(request, *args, **kwargs)

    return wrapper


# --- the OpenAI-compatible API (/v1) ------------------------------------------------------


def _openai_refusal(refusal: Refusal) -> JsonResponse:
    """OpenAI's error object: a 429 makes the openai client raise RateLimitError (and wait Retry-After)."""
    kind = "invalid_request_error" if refusal.status == 400 else "rate_limit_exceeded"
    param = "messages" if refusal.status == 400 else None
    body = {"error": {"message": refusal.message, "type": kind, "param": param, "code": refusal.code}}
    response = JsonResponse(body, status=refusal.status)
    if refusal.retry_after:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def openai_asking(view):
    """For /v1/chat/completions (below openai_endpoint): refusals as OpenAI's errors."""
    return _async_asking(_openai_question, _openai_refusal)(view)


# --- MCP ----------------------------------------------------------------------------------


def mcp_tool(kind: str, *, user_of):
    """For an MCP tool (below @server.tool): `kind` "ask" or "search"; `user_of(ctx)` the caller.

    A refusal is a tool error with the message. The tool's signature stays the SDK's to read
    (functools.wraps: its parameters, annotations and docstring).
    """
    searching = kind == "search"

    def decorate(tool):
        @functools.wraps(tool)
        async def wrapper(*args, **kwargs):
            user = user_of(kwargs["ctx"])
            if refusal := question_refusal(kwargs.get("query" if searching else "question")):
                raise ToolError(refusal.message)
            others = None if searching else await sync_to_async(_asking_begin, thread_sensitive=False)(user)
            try:
                check = _released(_ask_refusal)
                refusal = await sync_to_async(check, thread_sensitive=False)(
                    user, asking_others=others, searching=searching
                )
                if refusal:
                    raise ToolError(refusal.message)
                return await tool(*args, **kwargs)
            finally:
                if others is not None:
                    _asking_end(user)

        return wrapper

    return decorate
