import gc
import os

from django.core.asgi import get_asgi_application
from starlette.routing import Router

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
# Before the settings load: this process serves requests, so its connections come from a pool
# (kb.settings, KB_DB_POOL_MAX_SIZE). Workers and commands keep plain connections.
os.environ["KB_WEB_PROCESS"] = "1"
django_application = get_asgi_application()

from kb import answer_relay, retrieval  # noqa: E402  (needs the settings configured above)
from kb.api import mcp  # noqa: E402

_frozen = False

# Django's handler refuses ASGI lifespan events; the MCP endpoint's session manager needs them
# (started once per process, stopped at shut-down). Starlette's Router speaks the protocol,
# failures included, so it handles them here rather than a copy of its code.
_lifespan = Router(lifespan=lambda _app: mcp.running())


async def application(scope, receive, send):
    global _frozen
    # Sync views start answers on this loop (kb.answer_relay.start_early).
    answer_relay.remember_loop()
    if scope["type"] == "lifespan":
        await _lifespan.lifespan(scope, receive, send)
        return
    if scope["type"] == "http" and scope["path"] in mcp.PATHS:
        await mcp.application(scope, receive, send)
    else:
        await django_application(scope, receive, send)
    if not _frozen and retrieval.question_model_loaded.is_set():
        # The first question loaded the embedding model: with Django, transformers and ONNX
        # Runtime that is ~270,000 long-lived objects, which every full garbage collection
        # walked again, 184 ms each here: the slowest questions' extra time. Frozen, the
        # collector leaves them be (the gc.freeze() recipe for servers in its documentation).
        gc.freeze()
        _frozen = True
