"""Ask questions from the command line with the same services as the web view."""

from __future__ import annotations

import json
import sys
import time

from django.core.management.base import BaseCommand

from kb import answering, verification
from kb.management.cli import actor_and_collections, answer_message
from kb.models import Message
from kb.services.conversations import message_ask, message_quote


class Command(BaseCommand):
    help = "Retrieve and answer QUESTION (or one question per line of standard input)."

    def add_arguments(self, parser):
        parser.add_argument("question", nargs="?", metavar="QUESTION")
        parser.add_argument("--collection", action="append", required=True, metavar="NAME")
        parser.add_argument("--user", metavar="USERNAME", help="ask with this user's access (default: operator)")
        parser.add_argument("--top-k", type=int, default=None, metavar="K")
        parser.add_argument("--no-generate", action="store_true", help="retrieve only")
        parser.add_argument("--json", action="store_true", help="one JSON object per question")

    def handle(self, *args, question, collection, user, top_k, no_generate, json: bool, **options):
        actor, collections = actor_and_collections(username=user, names=collection)
        questions = [question] if question else (line.strip() for line in sys.stdin)
        for q in questions:
            if q:
                self._ask(actor, q, collections, top_k=top_k, generate=not no_generate, as_json=json)

    def _ask(self, actor, question: str, collections, *, top_k, generate: bool, as_json: bool) -> None:
        started = time.perf_counter()
        answer, first_token_ms, error = None, None, None
        sentences: list[dict] = []
        if not generate:
            # Retrieval alone records nothing: no conversation, no message.
            sources, _ = answering.retrieve_sources(user=actor, question=question, collections=collections, top_k=top_k)
            extractive = verification.extract(question, sources, verification.embed)
            retrieve_ms = (time.perf_counter() - started) * 1000
            mode, abstained = "retrieval", not sources
        else:
            # The views' path: the question is recorded in a conversation of the actor's, and
            # refused, answered and stored by the same services.
            message, _ = message_ask(user=actor, question=question, collections=collections, top_k=top_k)
            retrieve_ms = (time.perf_counter() - started) * 1000
            message = message_quote(user=actor, message=message)  # shown first, as on the page
            sources, extractive, mode = message.sources, message.extractive, message.mode
            if not as_json and mode == "auto" and extractive.get("sentences"):
                self.stdout.write("From the sources:\n" + _quoted(extractive) + "\n\nWritten by the model:")

            def show(piece: str) -> None:
                nonlocal first_token_ms
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - started) * 1000
                if not as_json:
                    self.stdout.write(piece, ending="")
                    self.stdout.flush()

            answer_message(actor, message, show)
            answer, sentences = message.answer, message.sentences
            abstained = message.status == Message.Status.NO_ANSWER
            if message.status in (Message.Status.FAILED, Message.Status.INCOMPLETE):
                error = message.error
        total_ms = (time.perf_counter() - started) * 1000
        if as_json:
            record = {
                "question": question,
                "mode": mode,
                "abstained": abstained,
                "answer": answer,
                "extractive": extractive.get("sentences", []),
                "sentences": [{k: x[k] for k in ("text", "citations", "supported")} for x in sentences],
                "sources": [
                    {
                        "rank": s["n"],
                        "source": s["source"],
                        "title": s["title"],
                        "url": s.get("url") or None,
                        "modified": s.get("modified"),
                        "heading": s["heading"],
                        "page": s["page"],
                        "score": s["score"],
                        "text": s["text"],
                    }
                    for s in sources
                ],  # fmt: skip
                "timings_ms": {
                    "retrieve": round(retrieve_ms, 2),
                    "first_token": round(first_token_ms, 2) if first_token_ms is not None else None,
                    "total": round(total_ms, 2),
                },
            }
            if error:
                record["error"] = error
            self.stdout.write(json.dumps(record, ensure_ascii=False))
            self.stdout.flush()
            return
        if generate and answer is not None and first_token_ms is None:
            self.stdout.write(answer, ending="")
        if error:
            self.stderr.write(f"\n{error}")
        unsupported = [x["text"] for x in sentences if not x["supported"]]
        if unsupported:
            self.stdout.write(f"\n\nNot found in the sources ({len(unsupported)}):")
            for text in unsupported:
                self.stdout.write(f"  - {text}")
        if not generate and extractive.get("sentences"):
            self.stdout.write("From the sources:\n" + _quoted(extractive) + "\n")
        self.stdout.write("\n\nSources:" if generate else "Sources:")
        for s in sources:
            where = " > ".join(x for x in [s["source"], s["heading"]] if x)
            page = f" (page {s['page']})" if s["page"] else ""
            self.stdout.write(f"  [{s['n']}] {where}{page}  score {s['score']:.4f}")


def _quoted(extractive: dict) -> str:
    return "\n".join(f"  {q['text']} " + "".join(f"[{n}]" for n in q["citations"]) for q in extractive["sentences"])
