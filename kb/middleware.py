"""kb's own middleware."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from kb import access


class AccessCacheMiddleware:
    """Work out each user's readable collections once per request (kb.access.request_cache)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        with access.request_cache():
            return self.get_response(request)

    async def _acall(self, request):
        with access.request_cache():
            return await self.get_response(request)
