"""Time to first token as a browser sees it, minus the model server's own, for the same prompt.

    .venv/bin/python bench/ttft.py --collection python311 --runs 20

Starts llama.cpp's server (SmolLM2-135M, as `make llm` does) and uvicorn on the local
database, signs in as a reader of the collection, and for each question:

1. browser: POST the question to /collections/<id>/ask/ (retrieval happens here), follow the
   redirect to the conversation page, open the message's SSE stream and stop at the first
   `token` event: time from the POST to that event;
2. model alone: send the very prompt kb built (the message's stored sources) straight to the
   model server with kb.llm and stop at the first piece.

llama.cpp reuses the evaluated prefix of the previous prompt, so a one-token request with a
different prompt runs before each measurement: both then pay the same prompt processing.
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

from kb import answering, llm, services  # noqa: E402
from kb.models import Collection, Message, Role  # noqa: E402
from tests.conftest import _server_env, answers, free_port, gguf_path, running  # noqa: E402

PYTHON = sys.executable
BIN = Path(sys.executable).parent


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


def browser_ttft_ms(web: httpx.Client, collection_id: int, question: str) -> tuple[float, int, dict]:
    """(ms from POST to the first token event, message id, phase times in ms)."""
    phases = {}
    started = time.perf_counter()
    csrf = web.cookies.get("csrftoken")
    posted = web.post(f"/collections/{collection_id}/ask/", data={"question": question, "csrfmiddlewaretoken": csrf},
                      headers={"Referer": str(web.base_url)}, follow_redirects=False)  # fmt: skip
    assert posted.status_code == 302, posted.status_code
    phases["post"] = (time.perf_counter() - started) * 1000
    page = web.get(posted.headers["location"])
    page.raise_for_status()
    phases["page"] = (time.perf_counter() - started) * 1000
    message_id = int(re.findall(r"/messages/(\d+)/stream/", page.text)[-1])
    with web.stream("GET", f"/messages/{message_id}/stream/", headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                phases["first_event"] = (time.perf_counter() - started) * 1000
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
    args = parser.parse_args()

    collection = Collection.objects.get(name=args.collection)
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-reader")
    user.set_password("bench-reader-pw-1")
    user.save()
    if not collection.grants.filter(user=user).exists():
        services.collection_grant(collection=collection, role=Role.VIEWER, user=user)
    questions = [q["q"] for q in map(json.loads, Path(args.questions).read_text().splitlines()) if q["expected"]]
    questions = questions[: args.runs]

    llm_url = f"http://127.0.0.1:{free_port()}"
    llm_cmd = [PYTHON, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
               "--port", llm_url.rsplit(":", 1)[1], "--n_ctx", "2048", "--n_threads", "2"]  # fmt: skip
    llm_env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    web_url = f"http://127.0.0.1:{free_port()}"
    web_cmd = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", web_url.rsplit(":", 1)[1]]
    settings.TGI_URL = llm_url
    web_env = _server_env({"TGI_URL": llm_url, "KB_DB_NAME": settings.DATABASES["default"]["NAME"],
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
            browser_ttft_ms(web, collection.pk, "warm-up: what is a list?")  # loads the embedding model
            for n, question in enumerate(questions, start=1):
                flush(llm_url)
                browser, message_id, phases = browser_ttft_ms(web, collection.pk, question)
                message = Message.objects.get(pk=message_id)
                if not message.sources or browser != browser:
                    print(f"{n:>2} no answer (nothing relevant): skipped")
                    continue
                flush(llm_url)
                model = model_ttft_ms(question, message.sources)
                rows.append({"q": question, "browser_ms": browser, "model_ms": model, "overhead_ms": browser - model,
                             "post_ms": phases["post"], "prompt_chars": sum(len(s["text"]) for s in message.sources)})  # fmt: skip
                print(f"{n:>2} browser {browser:7.0f} ms  model {model:7.0f} ms  overhead {browser - model:6.0f} ms  "
                      f"(POST incl. retrieval {phases['post']:5.0f} ms)", flush=True)  # fmt: skip
    overhead = [r["overhead_ms"] for r in rows]
    browser = [r["browser_ms"] for r in rows]
    model = [r["model_ms"] for r in rows]
    post = [r["post_ms"] for r in rows]
    print(f"\n{len(rows)} runs, KB_CONTEXT_TOKENS={settings.KB_CONTEXT_TOKENS}, KB_TOP_K={settings.KB_TOP_K}")
    for label, values in (("browser TTFT", browser), ("model TTFT", model), ("overhead", overhead),
                          ("POST /ask (retrieval + writes)", post)):  # fmt: skip
        print(f"{label:<32} p50 {percentile(values, 50):7.0f} ms  p95 {percentile(values, 95):7.0f} ms  "
              f"mean {statistics.fmean(values):7.0f} ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
