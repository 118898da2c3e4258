"""How soon kb's pages are usable in a browser on loopback (issue 15: the ask page interactive
in under 300 ms).

    .venv/bin/python bench/page_speed.py [--runs 20] [--warmup 3] [--json]

Uses a database of its own (KB_DB_NAME=kb_bench_pages in the embedded Postgres), filled as the
tests fill theirs, no model involved: a staff user, a collection of 30 ready documents and a
conversation of 10 finished answers citing them. Starts uvicorn on it, signs in once in headless
Chromium, then loads each page --warmup times untimed and --runs times timed, and reads each
load's Navigation Timing entry: responseStart (time to first byte), domInteractive and
domContentLoadedEventEnd, all from its startTime. The browser keeps its cache between loads,
as a returning reader's does. The target: the ask page's (home) domInteractive p50 < 300 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import statistics
import sys
from datetime import timedelta
from pathlib import Path

import _harness  # noqa: E402 - bench/ is on the path when this runs as a script

_harness.use_database("kb_bench_pages")  # its own database, whatever the shell says

CHROMIUM = os.environ.get("KB_CHROMIUM", "/usr/bin/chromium")
USERNAME, PASSWORD, COLLECTION = "bench-pages", "bench-pages-pw-1", "bench: page speed"
TARGET_MS = 300
TOPICS = ["backups", "restores", "on-call", "vacation", "onboarding", "offboarding", "VPN", "laptops",
          "expenses", "travel", "incidents", "deploys", "databases", "monitoring", "access requests"]  # fmt: skip
NAVIGATION = """() => { const e = performance.getEntriesByType("navigation")[0];
  return {ttfb: e.responseStart - e.startTime, interactive: e.domInteractive - e.startTime,
          dcl: e.domContentLoadedEventEnd - e.startTime}; }"""
METRICS = (("ttfb", "TTFB (responseStart)"), ("interactive", "domInteractive"), ("dcl", "DOMContentLoaded end"))


class Interrupted(Exception):
    pass


def seed(documents: int, messages: int) -> dict[str, str]:
    """The bench user, collection and conversation afresh; the pages' paths."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from kb.models import Collection, Conversation, Document, Message
    from kb.services.collections import collection_create

    Collection.objects.filter(name=COLLECTION).delete()
    User.objects.filter(username=USERNAME).delete()  # and its conversations
    user = User.objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    collection = collection_create(user=user, name=COLLECTION, description="Operations handbook (benchmark copy).")
    now = timezone.now()
    docs = []
    for i in range(documents):
        topic = TOPICS[i % len(TOPICS)]
        text = f"# {topic.title()} {i // len(TOPICS) + 1}\n\n" + f"How the {topic} process runs, step by step. " * 40
        docs.append(Document.objects.create(
            collection=collection, title=f"{topic.title()} handbook, part {i // len(TOPICS) + 1}",
            source_path=f"handbook/{topic.replace(' ', '-')}-{i:02d}.md",
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
            size=len(text), status=Document.Status.READY, chunk_count=6, uploaded_by=user,
            source_modified=now - timedelta(days=3 * i),
        ))  # fmt: skip
    conversation = Conversation.objects.create(user=user, title="How do backups and restores work?")
    conversation.collections.set([collection])
    for m in range(messages):
        cited = [docs[(m * 3 + k) % len(docs)] for k in range(4)]
        sources = [{"n": n, "chunk_id": 10_000 + m * 10 + n, "document_id": d.pk, "collection_id": collection.pk,
                    "title": d.title, "source": d.source_path, "url": "", "modified": d.source_modified.isoformat(),
                    "heading": f"{d.title} > Steps", "page": None, "score": round(0.9 - n / 20, 6),
                    "text": f"The {d.title.lower()} says what to do first, who approves it and where it is kept. " * 3}
                   for n, d in enumerate(cited, start=1)]  # fmt: skip
        answer = " ".join(f"Step {n}: follow {s['title']} [{n}]." for n, s in enumerate(sources, start=1))
        Message.objects.create(conversation=conversation, question=f"Question {m + 1}: what does {cited[0].title} say?",
                               answer=answer, status=Message.Status.COMPLETE, mode="generative", sources=sources,
                               finished_at=now)  # fmt: skip
    return {"ask page (home)": "/", "collection": f"/collections/{collection.pk}/",
            "conversation": f"/conversations/{conversation.pk}/"}  # fmt: skip


def measure(base: str, pages: dict[str, str], runs: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's loop in this thread; no ORM below
    with sync_playwright() as p:
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(f"{base}/login/")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/login/" not in url)
            figures = {}
            for name, path in pages.items():
                timed = {key: [] for key, _ in METRICS}
                for n in range(warmup + runs):
                    response = page.goto(f"{base}{path}", wait_until="load")
                    if response is None or response.status != 200 or "/login/" in page.url:
                        raise RuntimeError(f"{path} answered {response and response.status} at {page.url}")
                    if n >= warmup:
                        for key, value in page.evaluate(NAVIGATION).items():
                            timed[key].append(value)
                figures[name] = timed
            return figures
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed loads of each page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed loads of each page first")
    parser.add_argument("--documents", type=int, default=30)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.documents < 4 or args.messages < 1:
        parser.error("--runs and --messages must be at least 1, --documents at least 4, --warmup not negative")
    if not Path(CHROMIUM).exists():
        sys.exit(f"page_speed: no Chromium at {CHROMIUM} (apt-get install chromium, or set KB_CHROMIUM).")

    import django

    django.setup()
    from django.core.management import call_command

    from tests.helpers import BIN, _server_env, answers, free_port, running

    call_command("migrate", verbosity=0)
    pages = seed(args.documents, args.messages)
    base = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "uvicorn"), "kb.asgi:application", "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1],
           "--log-level", "warning"]  # fmt: skip
    load_start = os.getloadavg()[0]
    with running("bench-pages", cmd, ready=answers(f"{base}/login/"), env=_server_env()):
        figures = measure(base, pages, args.runs, args.warmup)

    cpu = _harness.cpu_name()
    print(f"{cpu}; {args.runs} loads per page after {args.warmup} warm-ups; load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print("\n| page | " + " | ".join(f"{label} p50 / p95" for _, label in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    result = {"cpu": cpu, "runs": args.runs, "warmup": args.warmup, "load_average_start": round(load_start, 1),
              "load_average_end": round(os.getloadavg()[0], 1), "pages": {}}  # fmt: skip
    for name, timed in figures.items():
        row = {
            key: {"p50_ms": round(statistics.median(v), 1), "p95_ms": round(_harness.nearest_rank(v, 95), 1)}
            for key, v in timed.items()
        }
        result["pages"][name] = {"path": pages[name], **row}
        cells = [f"{row[k]['p50_ms']:.0f} / {row[k]['p95_ms']:.0f} ms" for k, _ in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    home = result["pages"]["ask page (home)"]["interactive"]["p50_ms"]
    met = home < TARGET_MS
    result["target"] = {"what": "ask page domInteractive p50", "limit_ms": TARGET_MS, "ms": home, "met": met}
    print(f"\ntarget (ask page domInteractive p50 < {TARGET_MS} ms): {home:.0f} ms, "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    if args.json:
        print(json.dumps(result))


def _interrupt(signum, _frame):
    # Ctrl-C reaches Playwright's driver too, whose end the asyncio logger would report as an error.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    raise Interrupted(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - one clear line, no traceback: the server and browser are already stopped
        stopped = exc if isinstance(exc, Interrupted) else exc.__context__
        if isinstance(stopped, Interrupted):  # (or an error the interruption caused on the way out)
            print(f"page_speed: stopped ({stopped}); uvicorn and Chromium were shut down.", file=sys.stderr)
            sys.exit(130)
        sys.exit(f"page_speed: failed: {type(exc).__name__}: {str(exc).strip()[:2000]}")
