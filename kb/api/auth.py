"""Token authentication for the JSON API.

A request authenticates only by its bearer token; the session cookie is ignored, so a
page on another site cannot make a signed-in browser call the API, and CSRF checks can be
skipped on these views alone. The request then acts with exactly the token owner's rights.
"""

from __future__ import annotations

import functools
import inspect

from asgiref.sync import sync_to_async
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from kb import selectors
from kb.services.tokens import api_token_touch


def _bearer(request: HttpRequest) -> str:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    return raw.strip() if scheme.lower() == "bearer" else ""


def authenticate(request: HttpRequest):
    """The token's owner, or None."""
    raw = _bearer(request)
    if not raw:
        return None
    token = selectors.api_token_user(raw=raw)
    if token is None:
        return None
    api_token_touch(token=token)
    return token.user


def unauthorized() -> JsonResponse:
    response = JsonResponse({"error": "A valid API token is required (Authorization: Bearer <token>)."}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="kb"'
    return response


def not_found() -> JsonResponse:
    return JsonResponse({"error": "Not found."}, status=404)


def token_required(view):
    """Authenticate by bearer token (401 otherwise) and set request.user to its owner."""
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request, *args, **kwargs):
            user = await sync_to_async(authenticate)(request)
            if user is None:
                return unauthorized()
            request.user = user
            try:
                return await view(request, *args, **kwargs)
            except (Http404, PermissionError):
                return not_found()

        return csrf_exempt(async_wrapper)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        user = authenticate(request)
        if user is None:
            return unauthorized()
        request.user = user
        try:
            return view(request, *args, **kwargs)
        except (Http404, PermissionError):
            return not_found()

    return csrf_exempt(wrapper)
