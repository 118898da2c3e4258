"""Sources of a collection: add one, watch its runs, sync it now, remove it. Thin views."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from kb import access, selectors
from kb.forms import SourceForm
from kb.models import Role, SourceRun
from kb.services import sources as source_services


@require_http_methods(["GET", "POST"])
@login_required
def source_create(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    form = SourceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            source = source_services.source_add(user=request.user, collection=collection, **form.service_arguments())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.info(request, f"Added {source.name}; its first sync has started.")
            return redirect(source)
    status = 400 if request.method == "POST" else 200
    return TemplateResponse(request, "kb/source_form.html", {"collection": collection, "form": form}, status=status)


def _runs_context(request: HttpRequest, source) -> dict:
    runs = selectors.source_runs(user=request.user, source=source)
    active = any(r.status == SourceRun.Status.RUNNING or (r.progress and not r.progress.done) for r in runs)
    # A source just added has its first run queued: watch for it rather than say "not synced".
    first_queued = not runs and timezone.now() - source.created_at < timedelta(seconds=settings.KB_SOURCE_STALE_SECONDS)
    return {
        "source": source, "runs": runs, "runs_active": active or first_queued, "queued": first_queued,
        "can_edit": access.can_edit(request.user, source.collection),
    }  # fmt: skip


@require_GET
@login_required
def source_detail(request: HttpRequest, pk: int) -> HttpResponse:
    source = selectors.source_get(user=request.user, pk=pk)
    part = request.GET.get("part") if request.htmx else None
    if part == "runs":
        return TemplateResponse(request, "kb/source_detail.html#runs", _runs_context(request, source))
    context = {
        **_runs_context(request, source),
        "collection": source.collection,
        "location": source_services.location_for_display(source.location),
        "documents": selectors.source_documents(user=request.user, source=source),
    }
    if part == "source-documents":
        # Polled while a run or its processing goes on; the last poll shows the final list.
        return TemplateResponse(request, "kb/source_detail.html#source-documents", context)
    return TemplateResponse(request, "kb/source_detail.html", context)


@require_POST
@login_required
def source_sync(request: HttpRequest, pk: int) -> HttpResponse:
    source = selectors.source_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    if source_services.source_sync_request(user=request.user, source=source):
        messages.info(request, f"Syncing {source.name} now.")
    else:
        messages.info(request, f"{source.name} is being synced already.")
    if request.htmx:
        return TemplateResponse(
            request, "kb/source_detail.html#runs", {**_runs_context(request, source), "queued": True}
        )
    return redirect(source)


@require_POST
@login_required
def source_remove(request: HttpRequest, pk: int) -> HttpResponse:
    source = selectors.source_get(user=request.user, pk=pk, minimum=Role.EDITOR)
    keep = request.POST.get("keep_documents") == "on"
    removed = source_services.source_remove(user=request.user, source=source, keep_documents=keep)
    kept = "its documents were kept" if keep else f"{removed} document(s) removed with it"
    messages.info(request, f"Removed the source {source.name}; {kept}.")
    return redirect("collection_detail", pk=source.collection_id)
