"""Asking: questions become messages; answers stream over server-sent events."""

from __future__ import annotations

import logging
import re
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url, reswap, retarget
from redis.exceptions import RedisError

from kb import answer_relay, answering, limits, selectors, verification
from kb.forms import AskForm, ConversationRenameForm, ConversationSearchForm, FeedbackForm
from kb.models import Message
from kb.services import conversations as conversation_services
from kb.services.conversations import feedback_give, message_answer_start, message_ask, message_quote
from kb.sse import sse_event

logger = logging.getLogger(__name__)


def _message_context(user, message: Message, *, sources: list[dict] | None = None, feedback=False) -> dict:
    """One answer's template context; a conversation page passes what it read for all of them."""
    if sources is None:
        sources = selectors.message_sources(user=user, message=message)
    return {
        "message": message,
        "feedback": selectors.feedback_get(user=user, message=message) if feedback is False else feedback,
        "sources": [{**s, "breadcrumb": answering.breadcrumb(s)} for s in sources],
        **answering.checked_answer(message, sources),
    }


def _invalid(request: HttpRequest, errors: list[str], *, target: str = "#ask-error") -> HttpResponse:
    """A refused request: 422 swapped into the form's error line under htmx, else a plain 400."""
    text = escape(" ".join(errors) or "Ask a question first.")
    if not request.htmx:
        return HttpResponse(text, status=400)
    return reswap(retarget(HttpResponse(text, status=422), target), "innerHTML")


def _ask(request: HttpRequest, *, collections, conversation=None) -> tuple[Message | None, HttpResponse | None]:
    """Validate the question and record it: (message, None), or (None, the refusal to send)."""
    form = AskForm(request.POST)
    if not form.is_valid():
        return None, _invalid(request, form.errors.get("question", []))
    try:
        message, _ = message_ask(
            user=request.user,
            question=form.cleaned_data["question"],
            collections=collections,
            conversation=conversation,
        )
    except ValidationError as exc:
        return None, _invalid(request, exc.messages)
    # The model starts on the answer now, while the browser loads the page and connects to
    # its stream (kb.answer_relay); the quoted answer is worked out meanwhile.
    answer_relay.start_early(request.user, message)
    message_quote(user=request.user, message=message)
    return message, None


@require_POST
@login_required
@limits.asking()
def ask(request: HttpRequest) -> HttpResponse:
    """Start a conversation over the collections the reader picked (all they may read if none)."""
    collections = selectors.collection_list_picked(user=request.user, ids=request.POST.getlist("collections"))
    message, refusal = _ask(request, collections=collections)
    if refusal:
        return refusal
    return _to_new_conversation(request, message.conversation)


@require_POST
@login_required
@limits.asking()
def collection_ask(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a conversation on one collection with its first question."""
    collection = selectors.collection_get(user=request.user, pk=pk)
    message, refusal = _ask(request, collections=[collection])
    if refusal:
        return refusal
    return _to_new_conversation(request, message.conversation)


@require_GET
@login_required
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _conversation_page(request, selectors.conversation_get(user=request.user, pk=pk))


def _to_new_conversation(request: HttpRequest, conversation) -> HttpResponse:
    """Where a first question lands: its conversation page, whose stream then starts.

    Under htmx the page comes back in this very response, swapped into the body with its
    address pushed to the history, instead of a redirect that the browser follows with a
    second request and a full page load: the answer's stream opens one round trip sooner
    (bench/ttft.py). Without JavaScript it is a plain redirect.
    """
    if not request.htmx:
        return redirect(conversation.get_absolute_url())
    response = _conversation_page(request, conversation)
    return push_url(reswap(retarget(response, "body"), "innerHTML"), conversation.get_absolute_url())


def _conversation_page(request: HttpRequest, conversation) -> TemplateResponse:
    messages_ = list(conversation.messages.all())
    sources = selectors.message_sources_by_message(user=request.user, messages=messages_)
    feedback = selectors.feedback_by_message(user=request.user, messages=messages_)
    items = [_message_context(request.user, m, sources=sources[m.pk], feedback=feedback.get(m.pk)) for m in messages_]
    return TemplateResponse(
        request,
        "kb/conversation_detail.html",
        {
            "conversation": conversation,
            "items": items,
            "collections": selectors.conversation_collections(user=request.user, conversation=conversation),
            "conversations": selectors.conversation_list(user=request.user)[: selectors.SIDEBAR_LIMIT],
            "ask_form": AskForm(),
            "rename_form": ConversationRenameForm(initial={"title": conversation.title or str(conversation)}),
        },
    )


@require_POST
@login_required
@limits.asking()
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


@require_GET
@login_required
def conversation_search(request: HttpRequest) -> HttpResponse:
    """The reader's conversations whose title or questions contain the search words.

    Under htmx the sidebar's list alone, as the reader types; without JavaScript a page.
    """
    form = ConversationSearchForm(request.GET)
    query = form.cleaned_data["q"] if form.is_valid() else ""
    found = selectors.conversation_search(user=request.user, query=query)[: selectors.SIDEBAR_LIMIT]
    context = {"conversations": found, "query": query}
    if request.htmx:
        return TemplateResponse(request, "kb/_sidebar.html#conversation-list", context)
    return TemplateResponse(request, "kb/conversation_list.html", context)


@require_POST
@login_required
def conversation_rename(request: HttpRequest, pk: int) -> HttpResponse:
    """Give a conversation a title of the reader's choosing; the sidebar's entry follows."""
    conversation = selectors.conversation_get(user=request.user, pk=pk)
    form = ConversationRenameForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form.errors.get("title", []), target="#rename-error")
    try:
        conversation = conversation_services.conversation_rename(
            user=request.user, conversation=conversation, title=form.cleaned_data["title"]
        )
    except ValidationError as exc:
        return _invalid(request, exc.messages, target="#rename-error")
    if request.htmx:
        form = ConversationRenameForm(initial={"title": conversation.title})
        context = {"conversation": conversation, "rename_form": form, "renamed": True}
        return TemplateResponse(request, "kb/conversation_detail.html#conversation-head", context)
    return redirect(conversation.get_absolute_url())


@require_POST
@login_required
def conversation_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete one of the reader's conversations (its page asks first), then go home."""
    conversation = selectors.conversation_get(user=request.user, pk=pk)
    conversation_services.conversation_delete(user=request.user, conversation=conversation)
    messages.success(request, "Conversation deleted.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("home"))
    return redirect("home")


@require_POST
@login_required
def message_stop(request: HttpRequest, pk: int) -> HttpResponse:
    """Stop the answer being written; the stream then sends its final state itself."""
    message = selectors.message_get(user=request.user, pk=pk)
    message = conversation_services.message_stop(user=request.user, message=message)
    if request.htmx:
        if message.status == Message.Status.INCOMPLETE and not message.answer:
            # Stopped before the stream began: nothing will send its final state, so do it here.
            return TemplateResponse(
                request, "kb/conversation_detail.html#message", {"item": _message_context(request.user, message)}
            )
        return HttpResponse(status=204)
    return redirect(message.conversation.get_absolute_url())


@require_POST
@login_required
@limits.asking(target="#message-{pk} .message-error")
def message_regenerate(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer a question again, from freshly retrieved sources."""
    message = selectors.message_get(user=request.user, pk=pk)
    try:
        message = conversation_services.message_regenerate(user=request.user, message=message)
    except ValidationError as exc:
        return _invalid(request, exc.messages, target=f"#message-{message.pk} .message-error")
    answer_relay.start_early(request.user, message)
    message_quote(user=request.user, message=message)
    if request.htmx:
        return TemplateResponse(
            request, "kb/conversation_detail.html#message", {"item": _message_context(request.user, message)}
        )
    return redirect(message.conversation.get_absolute_url())


@require_POST
@login_required
def message_feedback(request: HttpRequest, pk: int) -> HttpResponse:
    """Thumbs up or down, with an optional comment, on an answer."""
    message = selectors.message_get(user=request.user, pk=pk)
    form = FeedbackForm(request.POST)
    if not form.is_valid():
        return _invalid(request, ["Choose helpful or not helpful."], target=f"#feedback-{message.pk} .error")
    try:
        feedback = feedback_give(
            user=request.user, message=message, rating=form.cleaned_data["rating"], comment=form.cleaned_data["comment"]
        )
    except ValidationError as exc:
        return _invalid(request, exc.messages, target=f"#feedback-{message.pk} .error")
    if request.htmx:
        context = {"item": {**_message_context(request.user, message), "feedback": feedback}}
        return TemplateResponse(request, "kb/conversation_detail.html#feedback", context)
    return redirect(message.conversation.get_absolute_url())


_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _stream_start(user, pk: int):
    """(message, sources, history, claimed, the sources shown): all a stream reads before it waits on the model."""
    message = selectors.message_get(user=user, pk=pk)
    sources, history, claimed = message_answer_start(user=user, message=message)
    # What checked sentences may link to: the sources this reader may read (a follower has none loaded).
    shown = sources or selectors.message_sources(user=user, message=message)
    conversation_services.connection_release()
    return message, sources, history, claimed, shown


async def _replayed(message, after: str):
    """The relay's record of an ended answer as one batch, in the shape `answer_relay.follow` yields."""
    batch = await answer_relay.replay(message, after=after)
    if batch:
        yield batch


async def message_stream(request: HttpRequest, pk: int) -> HttpResponse:
    """Stream one message's answer as server-sent events: `state`, `token`s, then `done` with the final HTML.

    `state` ("Writing…") comes first, before the model's first word: a page shows it, with
    the time it has waited, so a slow or frozen model server is never an empty box.

    A pending answer is written here; one already being written (started by the question's
    POST, perhaps in another web process) is followed through its relay, from the start or,
    for a reconnecting EventSource, after its Last-Event-ID.
    """
    if request.method != "GET":
        return HttpResponse(status=405)
    user = await request.auser()
    if not user.is_authenticated:
        raise Http404
    message, sources, history, claimed, sources_shown = await sync_to_async(_stream_start)(user, pk)
    last_seen = request.headers.get("Last-Event-ID", "")
    after = last_seen if _ENTRY_ID.fullmatch(last_seen) else "0"

    async def done():
        await message.arefresh_from_db()
        context = await sync_to_async(_message_context)(user, message)
        html = await sync_to_async(render_to_string)("kb/conversation_detail.html#message", {"item": context})
        return sse_event("done", html)

    async def events():
        if claimed:
            pieces = answer_relay.produce(message, sources, history)
        elif message.status == Message.Status.STREAMING and message.stream_key:
            pieces = answer_relay.follow(message, after=after)
        elif message.stream_key:
            # Ended before this page connected: what its relay kept, as a live reader had it.
            pieces = _replayed(message, after)
        else:
            pieces = None
        if pieces is not None:
            # The passages are on the page already: the reader now waits for the model.
            yield sse_event("state", "Writing…")
            text = ""  # the answer so far, to tell the draft what is left once a sentence is checked
            try:
                async with aclosing(pieces):
                    async for batch in pieces:
                        written = []  # one write for all that arrived together
                        for entry, piece in batch:
                            if isinstance(piece, verification.Checked):
                                html = answering.render_sentence(piece.sentence, sources_shown)
                                written.append(sse_event("sentence", html + " ", entry))
                                written.append(sse_event("draft", escape(text[piece.upto :].lstrip()), entry))
                            else:
                                text += piece
                                written.append(sse_event("token", escape(piece), entry))
                        yield "".join(written)
            except RedisError as exc:
                # Following needs the relay (Redis restarting, say); its writer goes on without it.
                # Wait for the answer to end, then the final state below brings all of it.
                logger.warning("message %s: cannot follow its answer, waiting for its end: %s", message.pk, exc)
                yield sse_event("state", "Writing… (the live view was interrupted; the answer follows when it is done)")
                await answer_relay.wait_for_end(message)
        # Also what a reconnect after the end receives.
        yield await done()

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
