"""Asking: questions become messages; answers stream over server-sent events."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, reswap, retarget

from kb import answering, selectors, services
from kb.forms import AskForm
from kb.llm import ModelServerError
from kb.models import Message

logger = logging.getLogger(__name__)


def _message_context(user, message: Message) -> dict:
    sources = selectors.message_sources(user=user, message=message)
    return {
        "message": message,
        "sources": [{**s, "breadcrumb": answering.breadcrumb(s)} for s in sources],
        "answer_html": answering.render_answer(message.answer, sources) if message.answer else "",
    }


def _invalid(request: HttpRequest, errors: list[str]) -> HttpResponse:
    """A refused question: 422 swapped into the form's error line under htmx, else a plain 400."""
    text = escape(" ".join(errors) or "Ask a question first.")
    if not request.htmx:
        return HttpResponse(text, status=400)
    return reswap(retarget(HttpResponse(text, status=422), "#ask-error"), "innerHTML")


def _ask(request: HttpRequest, *, collections, conversation=None) -> tuple[Message | None, HttpResponse | None]:
    """Validate the question and record it: (message, None), or (None, the refusal to send)."""
    form = AskForm(request.POST)
    if not form.is_valid():
        return None, _invalid(request, form.errors.get("question", []))
    try:
        message, _ = services.message_ask(
            user=request.user,
            question=form.cleaned_data["question"],
            collections=collections,
            conversation=conversation,
        )
    except ValidationError as exc:
        return None, _invalid(request, exc.messages)
    return message, None


@require_POST
@login_required
def collection_ask(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a conversation on one collection with its first question."""
    collection = selectors.collection_get(user=request.user, pk=pk)
    message, refusal = _ask(request, collections=[collection])
    if refusal:
        return refusal
    if request.htmx:
        return HttpResponseClientRedirect(message.conversation.get_absolute_url())
    return redirect(message.conversation.get_absolute_url())


@require_GET
@login_required
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = selectors.conversation_get(user=request.user, pk=pk)
    items = [_message_context(request.user, m) for m in conversation.messages.all()]
    return TemplateResponse(
        request,
        "kb/conversation_detail.html",
        {
            "conversation": conversation,
            "items": items,
            "collections": selectors.conversation_collections(user=request.user, conversation=conversation),
            "conversations": selectors.conversation_list(user=request.user)[:20],
            "ask_form": AskForm(),
        },
    )


@require_POST
@login_required
def conversation_ask(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask a follow-up question in a conversation."""
    conversation = selectors.conversation_get(user=request.user, pk=pk)
    collections = list(selectors.conversation_collections(user=request.user, conversation=conversation))
    message, refusal = _ask(request, collections=collections, conversation=conversation)
    if refusal:
        return refusal
    if request.htmx:
        return TemplateResponse(
            request, "kb/conversation_detail.html#message", {"item": _message_context(request.user, message)}
        )
    return redirect(conversation.get_absolute_url())


def _sse(event: str, data: str) -> str:
    lines = data.split("\n")
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


async def message_stream(request: HttpRequest, pk: int) -> HttpResponse:
    """Stream one message's answer as server-sent events: `token`s, then `done` with the final HTML."""
    if request.method != "GET":
        return HttpResponse(status=405)
    user = await request.auser()
    if not user.is_authenticated:
        raise Http404
    message = await sync_to_async(selectors.message_get)(user=user, pk=pk)
    sources = await sync_to_async(selectors.message_sources)(user=user, message=message)
    claimed = await sync_to_async(services.message_claim)(message=message)

    async def done():
        context = await sync_to_async(_message_context)(user, message)
        html = await sync_to_async(render_to_string)("kb/conversation_detail.html#message", {"item": context})
        return _sse("done", html)

    async def events():
        if not claimed:
            # Already answered (a reconnect) or being answered in another tab.
            yield await done()
            return
        if not sources:
            message.answer = "None of the passages found for this question is readable by you any more."
            await sync_to_async(services.message_finish)(
                message=message, answer=message.answer, status=Message.Status.NO_ANSWER
            )
            yield await done()
            return
        pieces: list[str] = []
        status, error = Message.Status.COMPLETE, ""
        try:
            async with aclosing(answering.astream_answer(message.question, sources)) as stream:
                async for piece in stream:
                    pieces.append(piece)
                    yield _sse("token", escape(piece))
        except ModelServerError as exc:
            status = Message.Status.INCOMPLETE if pieces else Message.Status.FAILED
            error = str(exc)
        except asyncio.CancelledError:
            # The browser went away: the model stream is closed above; keep what arrived.
            await sync_to_async(services.message_finish)(
                message=message,
                answer="".join(pieces),
                status=Message.Status.INCOMPLETE,
                error="The answer was stopped before it finished.",
            )
            raise
        await sync_to_async(services.message_finish)(
            message=message, answer="".join(pieces), status=status, error=error
        )
        yield await done()

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
