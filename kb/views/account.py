"""The signed-in user's own account: personal API tokens (password change is Django's)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from kb import selectors
from kb.forms import TokenForm
from kb.services import tokens as token_services
from kb.services.tokens import api_token_create


def _tokens_page(request: HttpRequest, form: TokenForm, *, new_token: str = "", status: int = 200) -> HttpResponse:
    template = "kb/account_tokens.html"
    if request.htmx:
        template += "#tokens"
    context = {"tokens": selectors.api_token_list(user=request.user), "form": form, "new_token": new_token}
    return TemplateResponse(request, template, context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    """List tokens; POST creates one and shows it this once (the response is never cached)."""
    if request.method == "GET":
        return _tokens_page(request, TokenForm())
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            _, raw = api_token_create(user=request.user, name=form.cleaned_data["name"])
        except ValidationError as exc:
            form.add_error("name", exc)
        else:
            return _tokens_page(
                request,
                TokenForm(),
                new_token=raw,
            )
    # htmx swaps a 422 (base.html's responseHandling) so the form's errors show in place.
    return _tokens_page(request, form, status=422 if request.htmx else 400)


@require_POST
@login_required
def api_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.api_token_get(user=request.user, pk=pk)
    token_services.api_token_revoke(user=request.user, token=token)
    if request.htmx:
        return _tokens_page(request, TokenForm())
    return redirect("api_tokens")
