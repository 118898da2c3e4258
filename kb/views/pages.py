"""Collections and documents: thin function views over selectors and services."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling, push_url, trigger_client_event

from kb import access, limits, selectors
from kb.answering import citation_url
from kb.forms import AskForm, CollectionForm, DocumentFilterForm, UploadForm
from kb.models import Role
from kb.services import collections as collection_services
from kb.services import documents as document_services
from kb.views.undo import offer_undo, take_undo


def _home(request: HttpRequest, form: CollectionForm, *, status: int = 200) -> TemplateResponse:
    context = {
        "undo": take_undo(request),
        "deleted_collections": selectors.collections_deleted(user=request.user),
        "collections": selectors.collection_list(user=request.user),
        "conversations": selectors.conversation_list(user=request.user)[:20],
        "form": form,
        "ask_form": AskForm(),
        "can_create": access.can_create_collection(request.user),
    }
    return TemplateResponse(request, "kb/home.html", context, status=status)


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    return _home(request, CollectionForm())


@require_POST
@login_required
def collection_create(request: HttpRequest) -> HttpResponse:
    if not access.can_create_collection(request.user):
        raise Http404
    form = CollectionForm(request.POST)
    if form.is_valid():
        try:
            collection = collection_services.collection_create(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error("name", exc)
        else:
            return redirect("collection_detail", pk=collection.pk)
    return _home(request, form, status=400)


def _batches_context(request: HttpRequest, collection) -> dict:
    batches = selectors.batch_overview(user=request.user, collection=collection)
    return {
        "collection": collection,
        "batches": batches,
        "batches_running": any(not b.progress.done for b in batches),
        "can_edit": access.can_edit(request.user, collection),
    }


def _documents_context(request: HttpRequest, collection) -> dict:
    form = DocumentFilterForm(request.GET, statuses=selectors.DOCUMENT_FILTERS)
    filters = form.cleaned_data if form.is_valid() else {}
    listing = selectors.document_page(
        user=request.user, collection=collection, query=filters.get("q", ""), status=filters.get("status", ""),
        folder=filters.get("folder", ""), page=request.GET.get("page", 1),
    )  # fmt: skip
    base = reverse("collection_detail", args=[collection.pk])
    kept = {"q": listing.query, "status": listing.status, "folder": listing.folder}

    def url(**changes) -> str:
        # The list's own filters and page, nothing empty: what links, polls and the address keep.
        params = {k: v for k, v in {**kept, **changes}.items() if v and v != 1}
        return f"{base}?{urlencode(params)}" if params else base

    page = listing.page
    return {
        "collection": collection,
        "listing": listing,
        "documents": listing.documents,
        "pending": listing.pending,
        "filter_form": form,
        "list_url": url(page=page.number),
        "top_url": url(folder=""),
        "folder_links": [(name, url(folder=path), n) for name, path, n in listing.folders],
        "breadcrumb_links": [(name, url(folder=path)) for name, path in listing.breadcrumb],
        "previous_url": url(page=page.previous_page_number()) if page.has_previous() else "",
        "next_url": url(page=page.next_page_number()) if page.has_next() else "",
    }


def _collection_context(request: HttpRequest, collection) -> dict:
    can_edit = access.can_edit(request.user, collection)
    return {
        **_batches_context(request, collection),
        **_documents_context(request, collection),
        "undo": take_undo(request),
        "deleted_documents": selectors.documents_deleted(user=request.user, collection=collection),
        "max_upload_mb": settings.KB_MAX_UPLOAD_MB,
        "can_edit": can_edit,
        "can_manage": access.can_manage(request.user, collection),
        "upload_form": UploadForm(),
        "ask_form": AskForm(),
        "conversations": selectors.conversation_list(user=request.user)[:20],
        "sources": selectors.source_list(user=request.user, collection=collection),
    }


@require_GET
@login_required
def collection_detail(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk)
    if request.htmx and request.GET.get("part") == "batches":
        # When nothing runs, the partial comes back without its polling trigger, so polling
        # stops and the final counts stay on screen (a 286 would leave the last poll's).
        return TemplateResponse(request, "kb/collection_detail.html#batches", _batches_context(request, collection))
    if request.htmx and not request.htmx.history_restore_request:
        # The documents list: its filter form and folders swap the whole browser; the search
        # box, pages and polling only the list (so typing is never interrupted).
        target = "document-browser" if request.htmx.target == "document-browser" else "documents"
        context = _documents_context(request, collection)
        response = TemplateResponse(request, f"kb/collection_detail.html#{target}", context)
        if request.htmx.trigger != "documents":  # a search or a link, not the list's own poll
            response = push_url(response, context["list_url"])  # the address without empty fields
        return response
    return TemplateResponse(request, "kb/collection_detail.html", _collection_context(request, collection))


@require_POST
@login_required
@limits.uploading
def document_upload(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    form = UploadForm(request.POST, request.FILES)
    if form.is_valid():
        summary = document_services.batch_upload(
            user=request.user, collection=collection, files=form.cleaned_data["files"]
        )
        for error in summary.errors:
            messages.error(request, f"{error['source']}: {error['reason']}")
    else:
        for error in (e for field in form.errors.values() for e in field):
            messages.error(request, error)
    if request.htmx:
        response = TemplateResponse(request, "kb/collection_detail.html#batches", _batches_context(request, collection))
        return trigger_client_event(response, "kb:documents-changed")
    return redirect("collection_detail", pk=collection.pk)


@require_POST
@login_required
def batch_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    batch = selectors.batch_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    count = document_services.batch_cancel(user=request.user, batch=batch)
    messages.info(request, f"Cancelled {count} document(s) of {batch}.")
    if request.htmx:
        response = TemplateResponse(
            request, "kb/collection_detail.html#batches", _batches_context(request, batch.collection)
        )
        return trigger_client_event(response, "kb:documents-changed")
    return redirect("collection_detail", pk=batch.collection_id)


@require_GET
@login_required
def document_detail(request: HttpRequest, pk: int) -> HttpResponse:
    document = selectors.document_get(user=request.user, pk=pk)
    if request.htmx and request.GET.get("part") == "status":
        response = TemplateResponse(request, "kb/document_detail.html#document-status", {"document": document})
        if document.is_finished:
            # Tell htmx to stop polling, and reload once so the passages appear.
            response = HttpResponseStopPolling()
            response["HX-Refresh"] = "true"
        return response
    chunk_id = request.GET.get("chunk")
    return TemplateResponse(
        request,
        "kb/document_detail.html",
        {
            "document": document,
            "chunks": selectors.document_chunks(user=request.user, document=document),
            "hit": int(chunk_id) if chunk_id and chunk_id.isascii() and chunk_id.isdigit() else None,  # not "²"
            "can_edit": access.can_edit(request.user, document.collection),
        },
    )


@require_GET
@login_required
def document_download(request: HttpRequest, pk: int) -> HttpResponse:
    document = selectors.document_get(user=request.user, pk=pk)
    try:
        handle = document.file.open("rb")
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    response = FileResponse(handle, as_attachment=True, filename=document.source_path.rsplit("/", 1)[-1])
    if not request.META.get("wsgi.version"):
        # Under ASGI Django buffers a synchronous file iterator whole before sending it;
        # read the file in blocks in a thread instead (the headers FileResponse set stay).
        response.streaming_content = _blocks(handle)
    response["X-Content-Type-Options"] = "nosniff"
    return response


async def _blocks(handle, size: int = 256 * 1024):
    read = sync_to_async(handle.read, thread_sensitive=False)
    while block := await read(size):
        yield block


@require_http_methods(["GET", "POST"])
@login_required
def document_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: what deleting the document takes away, and a button; POST: delete it, offering an undo."""
    document = selectors.document_get(user=request.user, pk=pk)
    if not access.can_edit(request.user, document.collection):
        raise Http404
    if request.method == "GET":
        impact = selectors.document_delete_impact(user=request.user, document=document)
        return TemplateResponse(request, "kb/document_delete.html", {"document": document, "impact": impact})
    passages = document_services.document_delete(user=request.user, document=document)
    offer_undo(
        request,
        text=f"Deleted {document.source_path} and its {passages} passage{pluralize(passages)}: they are "
        "gone from search and answers.",
        url=reverse("document_restore", args=[document.pk]),
    )
    return redirect("collection_detail", pk=document.collection_id)


@require_POST
@login_required
def document_restore(request: HttpRequest, pk: int) -> HttpResponse:
    document = selectors.document_get_deleted(user=request.user, pk=pk)
    try:
        document_services.document_restore(user=request.user, document=document)
    except PermissionError:
        raise Http404 from None
    messages.info(request, f"Restored {document.source_path}; it is being processed again.")
    return redirect("collection_detail", pk=document.collection_id)


@require_GET
@login_required
def chunk_detail(request: HttpRequest, pk: int) -> HttpResponse:
    chunk = selectors.chunk_get(user=request.user, pk=pk)
    return redirect(citation_url({"document_id": chunk.document_id, "chunk_id": chunk.pk}))
