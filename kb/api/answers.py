"""What kb shows of an answer, as Markdown text a chat client can show (the OpenAI-compatible API).

The page shows an answer in parts: in `auto` mode the sentences quoted from the sources,
then the model's answer as kb checked it (each sentence with the [n] kb vouches for, the
ones no source supports marked or left out), then a note on what was checked and how the
answer ended. The text here has the same parts, in the same order and words, built from the
same `answering.checked_answer`; never the model's raw text.

The text grows at its end only while an answer streams (`head`, then each checked sentence,
then the notes), so a streaming client receives exactly what a non-streaming one gets.
"""

from __future__ import annotations

import re
from contextlib import aclosing
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.urls import reverse

from kb import answering, verification
from kb.models import Message
from kb.services.conversations import message_answer, message_quote

QUOTED_LABEL = "**From the sources**"
WRITTEN_LABEL = "**Written by the model, checked against the sources**"
UNSUPPORTED_NOTE = "(not found in the sources)"
_MARKED = re.compile(f"{verification.UNSUPPORTED_OPEN}(.*?){verification.UNSUPPORTED_CLOSE}", re.S)


@dataclass(frozen=True)
class Turn:
    """An earlier question and its answer sent by a client, shaped as kb's stored turns for a follow-up."""

    question: str
    answer: str


def model_words(answer: str) -> str:
    """An answer of kb's a client sends back as history, without the labels added here (kb keeps none)."""
    for label in (QUOTED_LABEL, WRITTEN_LABEL):
        answer = answer.replace(label, "")
    return answer.strip()


def _unmarked(text: str) -> str:
    """The page's highlight of an unsupported sentence, as a note after it (after a code block's fence)."""

    def note(match: re.Match) -> str:
        inner = match.group(1)
        return f"{inner}\n\n{UNSUPPORTED_NOTE}" if inner.startswith(("```", "~~~")) else f"{inner} {UNSUPPORTED_NOTE}"

    return _MARKED.sub(note, text)


def _composed(sentences: list[verification.Sentence]) -> str:
    return _unmarked(verification.compose(sentences, hide_unsupported=settings.KB_HIDE_UNSUPPORTED))


def head(message: Message, checked: dict) -> str:
    """What comes before the model's answer: the quoted sentences and the label, as on the page."""
    parts = []
    if message.mode == "auto" and checked["extractive"]:
        quoted = [verification.Sentence(text=q["text"], citations=q["citations"]) for q in checked["extractive"]]
        parts += [QUOTED_LABEL, _composed(quoted)]
    if message.mode == "auto" and message.status != Message.Status.NO_ANSWER:
        parts.append(WRITTEN_LABEL)
    return joined(parts)


def readable_sentences(sentences: list[verification.Sentence], sources: list[dict]) -> list[verification.Sentence]:
    """Checked sentences citing only the sources the reader may read, as the page shows them while streaming."""
    readable = {s["n"] for s in sources}
    return [
        verification.Sentence(**{**s.as_json(), "citations": [n for n in s.citations if n in readable]})
        for s in sentences
    ]


def body(sentences: list[verification.Sentence]) -> str:
    """Checked sentences as kb shows them."""
    return _composed(sentences)


def _verification_note(message: Message, counts: dict) -> str:
    claims, unsupported = counts["claims"], counts["unsupported"]
    if unsupported:
        how = ""
        if message.mode != "extractive":
            how = ": left out" if settings.KB_HIDE_UNSUPPORTED else ": marked, and not cited"
        verb = "was" if unsupported == 1 else "were"
        return f"{unsupported} of {claims} statement{'' if claims == 1 else 's'} {verb} not found in the sources{how}."
    return "Every statement was found in the sources it cites." if claims else ""


def _ending(message: Message, sources: list[dict]) -> str:
    if message.status == Message.Status.INCOMPLETE:
        return f"Incomplete: {message.error}"
    if message.status == Message.Status.FAILED:
        found = " The passages below were found for your question." if sources and "below" not in message.error else ""
        return message.error + found
    return ""


def shown_text(message: Message, sources: list[dict]) -> str:
    """The whole answer as kb shows it to this reader (`sources`: those they may still read)."""
    checked = answering.checked_answer(message, sources)
    if checked["sentences"]:
        answer = body([verification.Sentence(**s) for s in checked["sentences"]])
    else:
        answer = message.answer  # kb's own words: nothing found, or what arrived before the model failed
    tail = [_verification_note(message, checked["counts"]), _ending(message, sources)]
    return joined([head(message, checked), answer, *tail])


def joined(parts: list[str]) -> str:
    return "\n\n".join(p for p in parts if p)


def citations(sources: list[dict], absolute) -> list[dict]:
    """Each source as {n, title, source, url}: url is kb's page of the passage (`absolute` makes it absolute)."""
    return [
        {
            "n": s["n"],
            "title": answering.breadcrumb(s),
            "source": s["source"],
            "url": absolute(reverse("chunk_detail", args=[s["chunk_id"]])),
        }
        for s in sources
    ]


def estimated_tokens(text: str) -> int:
    """Tokens by kb's own rule of thumb: the model server's stream carries no counts to pass on."""
    return -(-len(text) // answering.CHARS_PER_TOKEN)


def prompt_tokens(message: Message, sources: list[dict], history, *, asked_model: bool) -> int:
    """The estimated size of the prompt kb sent the model for this answer (0 when kb answered alone)."""
    if not asked_model:
        return 0
    prompt = answering.build_messages(message.question, sources, history)
    return estimated_tokens("".join(m["content"] for m in prompt))


async def answer_to_the_end(*, user, message: Message, sources: list[dict], history, claimed: bool) -> Message:
    """Let a claimed answer be written to its end with nobody reading along, then add its quoted answer.

    The JSON APIs that answer in one response (/api/ask and /v1 without streaming) wait for
    the whole answer; the message comes back refreshed, as the services left it.
    """
    if claimed:
        async with aclosing(message_answer(message=message, sources=sources, history=history)) as pieces:
            async for _ in pieces:
                pass
    await sync_to_async(message_quote)(user=user, message=message)
    await message.arefresh_from_db()
    return message
