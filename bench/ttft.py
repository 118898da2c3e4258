"""Time to first token as a browser sees it, minus the model server's own, for the same prompt.

    .venv/bin/python bench/ttft.py --collection python311 --runs 20

Starts llama.cpp's server (SmolLM2-135M, as `make llm` does) and uvicorn on the local
database, signs in as a reader of the collection, and for each question:

1. browser: POST the question to /collections/<id>/ask/ (retrieval happens here) as the
   page's htmx form does, which gets the conversation page back (with --no-js: follow the
   redirect to it instead), open the message's SSE stream and stop at the first `token`
   event: time from the POST to that event;
2. model alone, same request: kb reaches the model server through a timing relay that only
   forwards bytes and notes when the request arrived and when the first non-empty
   `content` left the model server. Overhead = 1 - 2. On two busy cores the model's own
   time to first token varies by seconds from one call to the next, so timing the same
   request is the only way to see an overhead of milliseconds;
3. with --direct, also the very prompt kb built (the message's stored sources) sent
   straight to the model server with kb.llm, stopping at the first piece (a cross-check).

llama.cpp reuses the evaluated prefix of the previous prompt, so a one-token request with a
different prompt runs before each measurement: each pays the whole prompt processing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402

from kb import access, answering, llm  # noqa: E402
from kb.models import Collection, Message, Role  # noqa: E402
from kb.services.collections import collection_grant  # noqa: E402
from tests.conftest import gguf_path  # noqa: E402
from tests.helpers import _server_env, answers, free_port, running  # noqa: E402

PYTHON = sys.executable
BIN = Path(sys.executable).parent


class TimingRelay:
    """A TCP relay to the model server noting, per request, its arrival and its first content."""

    CONTENT = re.compile(rb'"content"\s*:\s*"(?!")')

    def __init__(self, upstream_port: int):
        import asyncio
        import threading

        self.upstream_port = upstream_port
        self.port = free_port()
        self.requests: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _serve(self, reader, writer) -> None:
        import asyncio

        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        current: dict = {}

        async def upstream():
            nonlocal current
            while data := await reader.read(65536):
                if data.startswith((b"POST ", b"GET ")):
                    current = {"start": time.perf_counter(), "first": None, "seen": b""}
                    self.requests.append(current)
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream():
            while data := await up_reader.read(65536):
                if current and current["first"] is None:
                    current["seen"] = current["seen"][-64:] + data
                    if self.CONTENT.search(current["seen"]):
                        current["first"] = time.perf_counter()
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def flush(llm_url: str) -> None:
    """A one-token request with an unrelated prompt, so the next prompt is evaluated from scratch."""
    httpx.post(f"{llm_url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": f"Say hi {time.time()}"}], "max_tokens": 1,
    }, timeout=120).raise_for_status()  # fmt: skip


def model_ttft_ms(question: str, sources: list[dict]) -> float:
    started = time.perf_counter()
    stream = llm.stream_chat(answering.build_messages(question, sources))
    try:
        next(iter(stream))
        return (time.perf_counter() - started) * 1000
    finally:
        stream.close()


def browser_ttft_ms(
    web: httpx.Client, collection_id: int, question: str, *, htmx: bool = True
) -> tuple[float, int, dict]:
    """(ms from POST to the first token event, message id, phase times in ms).

    `htmx`: post as the page's htmx form does, which gets the conversation page in the
    response; else as a browser without JavaScript, which follows a redirect to it.
    """
    phases = {}
    started = time.perf_counter()
    csrf = web.cookies.get("csrftoken")
    headers = {"Referer": str(web.base_url)} | ({"HX-Request": "true"} if htmx else {})
    posted = web.post(f"/collections/{collection_id}/ask/", data={"question": question, "csrfmiddlewaretoken": csrf},
                      headers=headers, follow_redirects=False)  # fmt: skip
    assert posted.status_code == (200 if htmx else 302), posted.status_code
    phases["post"] = (time.perf_counter() - started) * 1000
    phases["t_post"] = time.perf_counter()
    if htmx:
        page = posted
    else:
        page = web.get(posted.headers["location"])
        page.raise_for_status()
    phases["page"] = (time.perf_counter() - started) * 1000
    phases["t_page"] = time.perf_counter()
    message_id = int(re.findall(r"/messages/(\d+)/stream/", page.text)[-1])
    with web.stream("GET", f"/messages/{message_id}/stream/", headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                phases["first_event"] = (time.perf_counter() - started) * 1000
                phases["t_first"] = time.perf_counter()
                if line == "event: token":
                    return phases["first_event"], message_id, phases
                if line == "event: done":
                    return float("nan"), message_id, phases
    raise RuntimeError("the stream ended without a token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--questions", default=str(ROOT / "bench" / "python311_questions.jsonl"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", metavar="FILE", help="also write each run's figures here")
    parser.add_argument("--direct", action="store_true", help="also time the same prompt sent straight to the model")
    parser.add_argument(
        "--no-js",
        action="store_true",
        help="ask as a browser without JavaScript: a redirect, then a GET of the conversation page",
    )
    args = parser.parse_args()

    collection = Collection.objects.get(name=args.collection)
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-reader")
    user.set_password("bench-reader-pw-1")
    user.save()
    if not collection.grants.filter(user=user).exists():
        collection_grant(actor=access.system_user(), collection=collection, role=Role.VIEWER, user=user)
    questions = [q["q"] for q in map(json.loads, Path(args.questions).read_text().splitlines()) if q["expected"]]
    questions = questions[: args.runs]

    llm_url = f"http://127.0.0.1:{free_port()}"
    llm_cmd = [PYTHON, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
               "--port", llm_url.rsplit(":", 1)[1], "--n_ctx", "2048", "--n_threads", "2"]  # fmt: skip
    llm_env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    web_url = f"http://127.0.0.1:{free_port()}"
    web_cmd = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", web_url.rsplit(":", 1)[1]]
    settings.KB_LLM_URL = llm_url
    relay = TimingRelay(int(llm_url.rsplit(":", 1)[1]))
    web_env = _server_env({"KB_LLM_URL": f"http://127.0.0.1:{relay.port}",
                           "KB_DB_NAME": settings.DATABASES["default"]["NAME"],
                           "KB_MEDIA_ROOT": str(settings.MEDIA_ROOT)})  # fmt: skip
    rows = []
    with running("bench-llm", llm_cmd, ready=answers(f"{llm_url}/v1/models"), env=llm_env, timeout=120), \
            running("bench-web", web_cmd, ready=answers(f"{web_url}/login/"), env=web_env):  # fmt: skip
        with httpx.Client(base_url=web_url, timeout=120) as web:
            web.get("/login/")
            signed_in = web.post("/login/", data={"username": user.username, "password": "bench-reader-pw-1",
                                                  "csrfmiddlewaretoken": web.cookies["csrftoken"]})  # fmt: skip
            assert signed_in.status_code == 302, "sign-in failed"
            flush(llm_url)
            browser_ttft_ms(
                web, collection.pk, "warm-up: what is a list?", htmx=not args.no_js
            )  # loads the embedding model
            for n, question in enumerate(questions, start=1):
                flush(llm_url)
                browser, message_id, phases = browser_ttft_ms(web, collection.pk, question, htmx=not args.no_js)
                message = Message.objects.get(pk=message_id)
                if not message.sources or browser != browser:
                    print(f"{n:>2} no answer (nothing relevant): skipped")
                    continue
                seen = relay.requests[-1]
                model = (seen["first"] - seen["start"]) * 1000
                row = {"q": question, "browser_ms": browser, "model_ms": model, "overhead_ms": browser - model,
                       "post_ms": phases["post"],
                       "page_ms": (phases["t_page"] - phases["t_post"]) * 1000,
                       "stream_to_model_ms": (seen["start"] - phases["t_page"]) * 1000,
                       "model_to_browser_ms": (phases["t_first"] - seen["first"]) * 1000,
                       "prompt_chars": sum(len(s["text"]) for s in message.sources)}  # fmt: skip
                if args.direct:
                    flush(llm_url)
                    row["direct_model_ms"] = model_ttft_ms(question, message.sources)
                rows.append(row)
                print(f"{n:>2} browser {browser:7.0f} ms  model {model:7.0f} ms  overhead {browser - model:6.0f} ms  "
                      f"(POST incl. retrieval {phases['post']:4.0f}, page {row['page_ms']:4.0f}, "
                      f"stream to model {row['stream_to_model_ms']:4.0f}, model to browser "
                      f"{row['model_to_browser_ms']:3.0f} ms)"
                      + (f"  direct model {row['direct_model_ms']:7.0f} ms" if args.direct else ""),
                      flush=True)  # fmt: skip
    overhead = [r["overhead_ms"] for r in rows]
    browser = [r["browser_ms"] for r in rows]
    model = [r["model_ms"] for r in rows]
    post = [r["post_ms"] for r in rows]
    print(f"\n{len(rows)} runs, KB_CONTEXT_TOKENS={settings.KB_CONTEXT_TOKENS}, KB_TOP_K={settings.KB_TOP_K}")
    series = [("browser TTFT", browser), ("model TTFT (same request)", model), ("overhead", overhead),
              ("POST /ask (retrieval + writes)", post),
              ("GET conversation page", [r["page_ms"] for r in rows]),
              ("SSE open -> request at model", [r["stream_to_model_ms"] for r in rows]),
              ("first token: model -> browser", [r["model_to_browser_ms"] for r in rows])]  # fmt: skip
    if args.direct:
        series.append(("model TTFT (direct, same prompt)", [r["direct_model_ms"] for r in rows]))
    for label, values in series:
        print(f"{label:<32} p50 {percentile(values, 50):7.0f} ms  p95 {percentile(values, 95):7.0f} ms  "
              f"mean {statistics.fmean(values):7.0f} ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
