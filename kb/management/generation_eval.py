"""kb_eval --generate: the real answer path on a question set, judged by what kb shows.

Each question is asked through the conversation services, as a reader asks it (a
conversation of the evaluating user's is recorded), and answered by whatever model server
KB_LLM_URL names. The figures are kb's own checks of each answer, so they mean the same for any
model: the share of shown statements kb could vouch for and cite, the identifiers and
numbers found in no source, answers that looped or came back empty, abstentions right and
wrong, and the time to the quoted (extractive) answer and to the model's first token.
"""

from __future__ import annotations

import statistics
import time

from kb.management.cli import answer_message
from kb.models import Message
from kb.services.conversations import EMPTY_ANSWER, LOOPING, message_ask, message_quote


def evaluate_generation(*, user, questions: list[dict], collections, limit: int | None = None) -> dict:
    """Ask every question (or the first `limit` of each kind) and total what kb decided of the answers."""
    answerable = [q for q in questions if q["expected"]]
    unanswerable = [q for q in questions if not q["expected"]]
    if limit:
        answerable, unanswerable = answerable[:limit], unanswerable[: max(1, limit // 5)]
    rows = [_ask(user, item, collections) for item in answerable + unanswerable]
    claims = [s for r in rows for s in r["sentences"] if s["citations"] or not s["supported"]]
    answered = [r for r in rows if not r["abstained"]]
    first_token = [r["first_token_ms"] for r in rows if r["first_token_ms"] is not None]
    quoted = [r["quoted_ms"] for r in rows]
    return {
        "questions": len(rows),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "mode": rows[0]["mode"] if rows else "",
        "statements": len(claims),
        "supported": _share(sum(1 for s in claims if s["supported"]), len(claims)),
        "cited": _share(sum(1 for s in claims if s["citations"]), len(claims)),
        "model_cited": _share(sum(1 for s in claims if s["written"]), len(claims)),
        "unknown_identifiers": sum(len(s["unknown"]) for s in claims),
        "looped": sum(1 for r in answered if r["error"] == LOOPING),
        "empty": sum(1 for r in answered if r["error"] == EMPTY_ANSWER),
        "failed": sum(1 for r in answered if r["status"] == Message.Status.FAILED),
        "with_quote": sum(1 for r in answered if r["quoted"]),
        "abstained_right": sum(1 for r in rows if r["abstained"] and not r["expected"]),
        "abstained_wrong": sum(1 for r in rows if r["abstained"] and r["expected"]),
        "quoted_ms": _spread(quoted),
        "first_token_ms": _spread(first_token),
        "per_question": rows,
    }


def _ask(user, item: dict, collections) -> dict:
    started = time.perf_counter()
    message, _ = message_ask(user=user, question=item["q"], collections=collections)
    asked_ms = (time.perf_counter() - started) * 1000
    first: list[float] = []

    def show(piece) -> None:
        if not first and isinstance(piece, str) and piece:
            first.append((time.perf_counter() - started) * 1000)

    if message.status == Message.Status.PENDING:
        answer_message(user, message, show)
    # The page works the quote out while the model reads its prompt: its time is the question's
    # recording plus its own, whatever the model does meanwhile.
    quoting = time.perf_counter()
    message = message_quote(user=user, message=message)
    quoted_ms = asked_ms + (time.perf_counter() - quoting) * 1000
    return {
        "q": item["q"],
        "expected": item["expected"],
        "mode": message.mode,
        "status": message.status,
        "error": message.error,
        "abstained": message.status == Message.Status.NO_ANSWER,
        "quoted": bool((message.extractive or {}).get("sentences")),
        "quoted_ms": round(quoted_ms, 1),
        "first_token_ms": round(first[0], 1) if first else None,
        "answer": message.answer,
        "sentences": message.sentences,
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _spread(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1)}


def print_generation(write, report: dict) -> None:
    """The figures as a few lines of text, through write(line)."""
    write(
        f"{report['questions']} questions ({report['answerable']} answerable, {report['unanswerable']} not), "
        f"KB_ANSWER_MODE={report['mode']}"
    )
    write(f"  statements shown: {report['statements']}; supported {report['supported']}, cited by kb "
          f"{report['cited']} (the model cited {report['model_cited']})")  # fmt: skip
    write(f"  identifiers and numbers in no source: {report['unknown_identifiers']}")
    write(f"  looped: {report['looped']}, empty: {report['empty']}, failed: {report['failed']}, "
          f"with a quoted answer: {report['with_quote']}")  # fmt: skip
    write(f"  abstained: {report['abstained_right']}/{report['unanswerable']} unanswerable, "
          f"{report['abstained_wrong']}/{report['answerable']} answerable")  # fmt: skip
    q, t = report["quoted_ms"], report["first_token_ms"]
    write(f"  quoted answer ready, ms: p50 {q['p50']} / p95 {q['p95']}; first model token, ms: "
          f"p50 {t['p50']} / p95 {t['p95']}")  # fmt: skip
