"""kb's answer to a request that failed on something other than the request itself.

Django calls handler500 inside its exception handler, so the failure is still in
sys.exc_info(); a database that does not answer (Postgres restarting, stopped, out of
connections) gets a 503 that says so and asks to retry, not "Something went wrong".
Nothing here may touch the database.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.views.decorators.csrf import requires_csrf_token
from django.views.defaults import server_error as django_server_error

RETRY_AFTER_SECONDS = 30
# A pool timeout reads the same whether Postgres is down or every connection is busy.
DATABASE_DOWN = (
    "kb cannot reach its database right now (it is restarting, or kb is too busy); nothing was changed. "
    "Try again in a minute."
)
_JSON_PREFIXES = ("/api/", "/v1/", "/mcp")


@requires_csrf_token
def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a 503 with Retry-After when the database is unreachable, else Django's 500 page."""
    if not isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        return django_server_error(request)
    if request.path.startswith(_JSON_PREFIXES):
        # The JSON APIs' error shapes: /api/v1 {"error": text}; OpenAI's {"error": {message, type}}.
        body = {"message": DATABASE_DOWN, "type": "service_unavailable"}
        response = JsonResponse({"error": body if not request.path.startswith("/api/") else DATABASE_DOWN}, status=503)
    else:
        response = HttpResponse(loader.get_template("503.html").render(), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response

