"""Collection administration for owners and staff: settings, access list, audit log."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from kb import access, selectors
from kb.forms import CollectionDeleteForm, CollectionSettingsForm, GrantForm
from kb.models import Role
from kb.services import collections as collection_services
from kb.services.collections import collection_grant, collection_revoke, collection_update
from kb.views.undo import offer_undo


def _access_context(request: HttpRequest, collection, *, settings_form=None, grant_form=None) -> dict:
    return {
        "collection": collection,
        "grants": selectors.collection_grants(user=request.user, collection=collection),
        "access_lines": access.collection_access(collection),
        "settings_form": settings_form
        or CollectionSettingsForm(
            initial={
                "name": collection.name,
                "description": collection.description,
                "open_to_all": collection.open_to_all,
                "stale_after_days": collection.stale_after_days,
            }
        ),  # fmt: skip
        "grant_form": grant_form or GrantForm(),
    }


def _access_page(request: HttpRequest, collection, *, status: int = 200, **forms) -> TemplateResponse:
    template = "kb/collection_access.html"
    if request.htmx:
        template += "#access"
    return TemplateResponse(request, template, _access_context(request, collection, **forms), status=status)


@require_GET
@login_required
def collection_access(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.OWNER)
    return _access_page(request, collection)


@require_POST
@login_required
def collection_settings(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.OWNER)
    form = CollectionSettingsForm(request.POST)
    if form.is_valid():
        try:
            collection_update(actor=request.user, collection=collection, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error("name", exc)
        else:
            messages.info(request, "Saved.")
            return redirect("collection_access", pk=collection.pk)
    collection.refresh_from_db()
    return _access_page(request, collection, status=400, settings_form=form)


@require_http_methods(["GET", "POST"])
@login_required
def collection_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: what deleting the collection takes away, and its name to type; POST: delete, offering an undo."""
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.OWNER)
    form = CollectionDeleteForm(request.POST or None, name=collection.name)
    if request.method == "POST" and form.is_valid():
        gone = collection_services.collection_delete(actor=request.user, collection=collection)
        offer_undo(
            request,
            text=f"Deleted the collection {collection.name}: {gone['documents']} document"
            f"{pluralize(gone['documents'])} and {gone['passages']} passage{pluralize(gone['passages'])}, "
            "gone from search and answers for everyone.",
            url=reverse("collection_restore", args=[collection.pk]),
        )
        return redirect("home")
    context = {
        "collection": collection,
        "form": form,
        "impact": selectors.collection_delete_impact(user=request.user, collection=collection),
    }
    return TemplateResponse(
        request, "kb/collection_delete.html", context, status=400 if request.method == "POST" else 200
    )


@require_POST
@login_required
def collection_restore(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get_deleted(user=request.user, pk=pk)
    collection_services.collection_restore(actor=request.user, collection=collection)
    messages.info(request, f"Restored the collection {collection.name}.")
    return redirect("collection_detail", pk=collection.pk)


@require_POST
@login_required
def grant_add(request: HttpRequest, pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.OWNER)
    form = GrantForm(request.POST)
    if not form.is_valid():
        return _access_page(request, collection, status=422 if request.htmx else 400, grant_form=form)
    collection_grant(
        actor=request.user, collection=collection, role=form.cleaned_data["role"],
        user=form.cleaned_data.get("user"), group=form.cleaned_data.get("group"),
    )  # fmt: skip
    if request.htmx:
        return _access_page(request, collection)
    return redirect("collection_access", pk=collection.pk)


@require_POST
@login_required
def grant_remove(request: HttpRequest, pk: int, grant_pk: int) -> HttpResponse:
    collection = selectors.collection_get(user=request.user, pk=pk, minimum=Role.OWNER)
    grant = selectors.grant_get(user=request.user, collection=collection, pk=grant_pk)
    collection_revoke(actor=request.user, collection=collection, user=grant.user, group=grant.group)
    if request.htmx:
        return _access_page(request, collection)
    return redirect("collection_access", pk=collection.pk)


@require_GET
@login_required
def audit_log(request: HttpRequest) -> HttpResponse:
    collection_id = request.GET.get("collection")
    if collection_id is not None and not (collection_id.isascii() and collection_id.isdigit()):  # not "²"
        raise Http404
    events = selectors.audit_list(user=request.user, collection_id=int(collection_id) if collection_id else None)
    return TemplateResponse(request, "kb/audit_log.html", {"events": events[:500]})
