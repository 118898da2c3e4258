"""The model server's status, for the banner every signed-in page loads after it has rendered (issue 15)."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from kb import llm


@require_GET
async def model_status(request: HttpRequest) -> HttpResponse:
    # Async: the check may wait up to llm.MODEL_STATUS_TIMEOUT, and a sync view would hold
    # the one thread every sync view shares under ASGI for that long.
    user = await request.auser()
    if not user.is_authenticated:
        # A poll from a page whose session ended: no swap (a login redirect would put the
        # sign-in page inside the banner); a plain visit goes to the sign-in page as usual.
        return HttpResponse(status=204) if request.htmx else redirect_to_login(request.get_full_path())
    online = await llm.amodel_server_online()
    return TemplateResponse(request, "kb/_model_status.html#model-status", {"model_online": online})
