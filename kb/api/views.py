"""JSON endpoints over the same selectors and services as the pages.

Objects the token's owner may not read are 404, as on the pages. Asking returns the
answer as JSON, or with `"stream": true` as server-sent events: `token` events with
pieces of text, then one `done` event with the whole message as JSON.
"""

from __future__ import annotations

import json
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET, require_POST

from kb import access, answering, limits, selectors, verification
from kb.api.answers import answer_to_the_end
from kb.api.auth import token_required
from kb.models import Message, Role
from kb.services.conversations import message_answer, message_answer_start, message_ask, message_quote
from kb.services.documents import document_upload
from kb.sse import sse_event


def _error(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _collection_json(user, collection) -> dict:
    return {
        "id": collection.pk,
        "name": collection.name,
        "description": collection.description,
        "role": access.role_for(user, collection),
    }


def _document_json(document) -> dict:
    return {
        "id": document.pk,
        "collection": document.collection_id,
        "title": document.title,
        "source_path": document.source_path,
        "status": document.status,
        "chunks": document.chunk_count,
        "error": document.error,
    }


def _message_json(user, message: Message) -> dict:
    sources = selectors.message_sources(user=user, message=message)
    checked = answering.checked_answer(message, sources)
    return {
        "conversation": message.conversation_id,
        "message": message.pk,
        "question": message.question,
        "answer": message.answer,
        "status": message.status,
        "error": message.error,
        "mode": message.mode,
        "abstained": message.status == Message.Status.NO_ANSWER,
        "extractive": checked["extractive"],
        "sentences": [{k: s[k] for k in ("text", "citations", "supported")} for s in checked["sentences"]],
        "sources": [
            {
                k: s.get(k)
                for k in (
                    "n",
                    "document_id",
                    "chunk_id",
                    "collection_id",
                    "title",
                    "source",
                    "heading",
                    "page",
                    "score",
                    "text",
                )
            }
            for s in sources
        ],  # fmt: skip
    }


@require_GET
@token_required
def collections(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"collections": [_collection_json(user, c) for c in selectors.collection_list(user=user)]})


@require_POST
@token_required
@limits.api_uploading
def documents_upload(request: HttpRequest, pk: int) -> JsonResponse:
    """Upload one or more files (multipart field `files`); 202 with each file's outcome."""
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    files = request.FILES.getlist("files") or request.FILES.getlist("file")
    if not files:
        return _error("Send the files as multipart form data in the field 'files'.")
    results = []
    for upload in files:
        try:
            outcome = document_upload(user=request.user, collection=collection, file=upload, source_path=upload.name)
        except ValidationError as exc:
            results.append({"source_path": upload.name, "outcome": "refused", "error": " ".join(exc.messages)})
        else:
            results.append({**_document_json(outcome.document), "outcome": outcome.outcome})
    status = 202 if any(r["outcome"] != "refused" for r in results) else 400
    return JsonResponse({"documents": results}, status=status)


@require_GET
@token_required
def document_detail(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(_document_json(selectors.document_get(user=request.user, pk=pk)))


def _parse_ask(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationError("The body must be JSON.") from None
    if not isinstance(body, dict):
        raise ValidationError("The body must be a JSON object.")
    ids = body.get("collections", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValidationError("'collections' must be a list of collection ids.")
    conversation = body.get("conversation")
    if conversation is not None and not isinstance(conversation, int):
        raise ValidationError("'conversation' must be a conversation id.")
    if not ids and conversation is None:
        raise ValidationError("Name the collections to ask, or the conversation to continue.")
    return {"question": str(body.get("question", "")), "ids": ids, "conversation": conversation,
            "stream": bool(body.get("stream", False))}  # fmt: skip


def _start(user, parsed: dict) -> Message:
    """Scope and record the question, exactly as the pages do; 404 for any unreadable id."""
    conversation = None
    if parsed["conversation"] is not None:
        conversation = selectors.conversation_get(user=user, pk=parsed["conversation"])
        collections = list(selectors.conversation_collections(user=user, conversation=conversation))
    else:
        collections = [selectors.collection_get(user=user, pk=pk) for pk in parsed["ids"]]
    message, _ = message_ask(user=user, question=parsed["question"], collections=collections, conversation=conversation)
    return message


@token_required
@limits.api_asking
async def ask(request: HttpRequest) -> HttpResponse:
    """POST {"question", "collections": [ids] | "conversation": id, "stream": bool}."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    user = request.user
    try:
        parsed = _parse_ask(request)
        message = await sync_to_async(_start)(user, parsed)
    except ValidationError as exc:
        return _error(" ".join(exc.messages))
    except Http404 as exc:
        return _error(str(exc) or "Not found.", status=404)
    sources, history, claimed = await sync_to_async(message_answer_start)(user=user, message=message)

    def answer(checked: bool = False):
        return aclosing(message_answer(message=message, sources=sources, history=history, checked=checked))

    if not parsed["stream"]:
        await answer_to_the_end(user=user, message=message, sources=sources, history=history, claimed=claimed)
        return JsonResponse(await sync_to_async(_message_json)(user, message))

    async def events():
        if claimed:
            async with answer(checked=True) as pieces:
                async for piece in pieces:
                    if isinstance(piece, verification.Checked):
                        fields = ("text", "citations", "supported")
                        yield sse_event("sentence", json.dumps({k: getattr(piece.sentence, k) for k in fields}))
                    else:
                        yield sse_event("token", json.dumps(piece))
        await sync_to_async(message_quote)(user=user, message=message)
        yield sse_event("done", json.dumps(await sync_to_async(_message_json)(user, message)))

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
