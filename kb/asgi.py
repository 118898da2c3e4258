import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
django_application = get_asgi_application()

from kb import answer_relay  # noqa: E402  (needs the settings configured above)


async def application(scope, receive, send):
    # Sync views start answers on this loop (kb.answer_relay.start_early).
    answer_relay.remember_loop()
    await django_application(scope, receive, send)
