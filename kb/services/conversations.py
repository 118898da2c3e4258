"""Conversations: ask, answer (streamed from the model server), stop, regenerate, rate.

The one place answers are generated, for the pages' stream, the JSON API and kb_ask alike.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import Truncator

from kb import access, answering, llm, retrieval, selectors, verification
from kb.models import Collection, Conversation, Feedback, Message

logger = logging.getLogger(__name__)


STOPPED = "Stopped at your request."
# The longest a cancelled answer's cleanup may take: closing the model stream, the last write.
CLEANUP_SECONDS = 30
NO_SOURCE_ANSWER = "I found nothing in the collections you can read that answers this question."


def _validate_question(question: str) -> str:
    question = question.strip()
    if not question:
        raise ValidationError("Ask a question first.")
    if len(question) > settings.KB_MAX_QUESTION_CHARS:
        raise ValidationError(f"Questions are limited to {settings.KB_MAX_QUESTION_CHARS:,} characters.")
    return question


def _retrieve_into(message: Message, *, user, collections, top_k: int | None) -> retrieval.Result:
    """Fill a message's sources, or answer it at once when none is found.

    In extractive mode the quoted sentences are the answer, worked out here, and no model is
    called. In the other modes the quote is message_quote's, called once the model has
    started: it then costs the first token nothing.
    """
    sources, result = answering.retrieve_sources(
        user=user, question=message.search_query or message.question, collections=collections, top_k=top_k
    )
    message.sources = answering.fit_to_budget(sources, settings.KB_CONTEXT_TOKENS)
    message.mode = settings.KB_ANSWER_MODE
    message.extractive, message.sentences = {}, []
    if message.sources and message.mode == "extractive":
        message.extractive = _quote(message)
    if not message.sources or (message.mode == "extractive" and not message.extractive["sentences"]):
        # Nothing readable answers it: say so plainly and never call the model.
        message.status = Message.Status.NO_ANSWER
        message.answer = _nothing_found(result.evidence.missing)
        message.finished_at = timezone.now()
    elif message.mode == "extractive":
        quoted = [verification.Sentence(text=q["text"], citations=q["citations"], score=message.extractive["score"])
                  for q in message.extractive["sentences"]]  # fmt: skip
        message.sentences = [q.as_json() for q in quoted]
        message.answer = verification.compose(quoted)
        message.status = Message.Status.COMPLETE
        message.finished_at = timezone.now()
    return result


def _nothing_found(missing: list[str]) -> str:
    """The no-answer text, naming the question's words that nothing the user may search contains."""
    if not missing:
        return NO_SOURCE_ANSWER
    names = [f"“{word}”" for word in missing[:4]]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"{NO_SOURCE_ANSWER} None of them mentions {listed}."


def _quote(message: Message) -> dict:
    return verification.extract(message.question, message.sources, verification.embed)


def message_quote(*, user, message: Message) -> Message:
    """Work out and store a message's quoted (extractive) answer, if it has none yet.

    Called by the pages right after the model was asked, so the quote is worked out while the
    model reads its prompt and is on the page before the model's first word.
    """
    if not access.can_use_conversation(user, message.conversation):
        raise PermissionError("Only the person who asked can see this answer.")
    if message.extractive or not message.sources:
        return message
    message.extractive = _quote(message)
    Message.objects.filter(pk=message.pk).update(extractive=message.extractive)
    return message


def message_ask(
    *,
    user,
    question: str,
    collections: list[Collection],
    conversation: Conversation | None = None,
    top_k: int | None = None,
    history: Sequence = (),
) -> tuple[Message, retrieval.Result]:
    """Record a question, retrieve its sources from what the user may read, and return the pending message.

    A follow-up in a conversation is first made standalone for retrieval (a possible model
    call), outside any transaction: a slow model server must not hold one open. `history`:
    earlier turns kept outside kb (each with `question` and `answer`, e.g. an API client's
    messages) for a question that starts a new conversation; a conversation's own turns win.
    """
    question = _validate_question(question)
    if conversation is not None and not access.can_use_conversation(user, conversation):
        raise PermissionError("A conversation takes questions from its owner only.")
    readable = [c for c in collections if access.can_read(user, c)]
    if conversation is not None:
        history = selectors.message_history(user=user, conversation=conversation)
    message = Message(question=question, search_query=answering.standalone_question(question, history))
    result = _retrieve_into(message, user=user, collections=readable, top_k=top_k)
    with transaction.atomic():
        if conversation is None:
            conversation = Conversation.objects.create(user=user, title=_title(question))
            conversation.collections.set(readable)
        message.conversation = conversation
        message.save()
        conversation.save(update_fields=["updated_at"])
    return message, result


TITLE_LIMIT = Conversation._meta.get_field("title").max_length


def _title(text: str) -> str:
    """The whole question as a title, up to the field's limit (then cut at a word, with an ellipsis)."""
    return Truncator(" ".join(text.split())).chars(TITLE_LIMIT)


def conversation_rename(*, user, conversation: Conversation, title: str) -> Conversation:
    """Give a conversation of one's own a new title."""
    if not access.can_use_conversation(user, conversation):
        raise PermissionError("Only the person who asked can rename a conversation.")
    title = " ".join(title.split())
    if not title:
        raise ValidationError("Give the conversation a title.")
    if len(title) > TITLE_LIMIT:
        raise ValidationError(f"Titles are limited to {TITLE_LIMIT} characters.")
    # Not through save(): a new title must not move the conversation to the top of the list.
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    conversation.title = title
    return conversation


@transaction.atomic
def conversation_delete(*, user, conversation: Conversation) -> None:
    """Delete a conversation of one's own with its questions and answers.

    Ratings given to its answers stay for the feedback review (they keep their own copy of
    question and answer; Feedback.message is SET_NULL). An answer still being written stops:
    its row is gone, and its writer ends when it next looks.
    """
    if not access.can_use_conversation(user, conversation):
        raise PermissionError("Only the person who asked can delete a conversation.")
    logger.info("conversation %s deleted by user %s", conversation.pk, user.pk)
    conversation.delete()


def message_regenerate(*, user, message: Message, top_k: int | None = None) -> Message:
    """Answer a message again: retrieve afresh with the user's current access, then stream anew."""
    if not access.can_use_conversation(user, message.conversation):
        raise PermissionError("Only the person who asked can have a question answered again.")
    if not message.is_finished:
        raise ValidationError("This answer is still being written; stop it first.")
    conversation = message.conversation
    history = selectors.message_history(user=user, conversation=conversation, before=message)
    collections = list(selectors.conversation_collections(user=user, conversation=conversation))
    message.search_query = answering.standalone_question(message.question, history)
    message.answer, message.error, message.finished_at = "", "", None
    message.status, message.stop_requested = Message.Status.PENDING, False
    _retrieve_into(message, user=user, collections=collections, top_k=top_k)
    with transaction.atomic():
        # The old answer's judgements keep their copy of it but no longer hang on the message.
        Feedback.objects.filter(message=message).update(message=None)
        message.save()
        conversation.save(update_fields=["updated_at"])
    return message


def message_stop(*, user, message: Message) -> Message:
    """Ask the stream writing this answer to stop; an answer not yet begun ends here."""
    if not access.can_use_conversation(user, message.conversation):
        raise PermissionError("Only the person who asked can stop an answer.")
    Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(stop_requested=True)
    stopped = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.INCOMPLETE, error=STOPPED, finished_at=timezone.now()
    )
    message.refresh_from_db()
    if stopped:
        logger.info("message %s stopped before it began", message.pk)
    return message


def feedback_give(*, user, message: Message, rating: int, comment: str = "") -> Feedback:
    """Record (or change) a reader's thumbs up or down on a finished answer."""
    if not message.is_finished or not message.answer:
        raise ValidationError("Only a finished answer can be rated.")
    if rating not in Feedback.Rating.values:
        raise ValidationError("Rate an answer up or down.")
    feedback, _ = Feedback.objects.update_or_create(
        message=message,
        user=user,
        defaults={
            "rating": rating,
            "comment": comment.strip()[:2000],
            "question": message.question,
            "answer": message.answer,
        },
    )
    return feedback


def message_finish(*, message: Message, answer: str, status: str, error: str = "", sources=(), checked=None) -> Message:
    """Store the generated answer (or what arrived of it), how it ended, and each sentence's check against `sources`.

    `checked`: the decisions already made while the answer streamed (kept as shown), else
    the answer is checked here.
    """
    if status == Message.Status.COMPLETE and not answer.strip():
        status, error = Message.Status.FAILED, EMPTY_ANSWER  # never "complete" with nothing to show
    if checked:
        message.sentences = [s.as_json() for s in checked]
    else:
        message.sentences = _checked(answer, list(sources)) if answer.strip() and sources else []
    message.answer = answer
    message.status = status
    message.error = error
    message.finished_at = timezone.now()
    # An update, not save(): a conversation deleted while its answer was written is simply gone.
    Message.objects.filter(pk=message.pk).update(
        answer=message.answer, status=message.status, error=message.error, finished_at=message.finished_at,
        sentences=message.sentences,
    )  # fmt: skip
    return message


def _checked(answer: str, sources: list[dict]) -> list[dict]:
    check = verification.StreamCheck(sources, verification.embed)
    check.add(answer)
    return [s.as_json() for s in (c.sentence for c in check.ready(final=True))]


# How often a running answer looks for a Stop request, in seconds.
STOP_POLL_SECONDS = 0.25
DISCONNECTED = "The answer was stopped before it finished: the connection to the reader was closed."
NO_LONGER_READABLE = "None of the passages found for this question is readable by you any more."
EMPTY_ANSWER = "The model server returned an empty answer. The passages it was given are listed below."
LOOPING = "Stopped: the model was repeating itself. What it wrote before that is kept."


_STOP = object()


async def _stop_requested(message: Message) -> bool:
    """Whether the reader pressed Stop, or deleted the conversation, since the answer began."""
    state = await message_state(message.pk)
    return state is None or state[2]


def connection_release() -> None:
    """Hand this thread's database connection back (to the pool, or closed) before a long wait.

    Django gives a request's connection back when its response ends, and an answer's stream
    lasts as long as the answer: hundreds of readers held hundreds of connections while they
    waited on the model (bench/concurrency.py). Inside a transaction (a test's) it stays.
    """
    if not connection.in_atomic_block:
        connection.close()


def _message_rows(ids: list[int]) -> dict[int, tuple[str, str, bool]]:
    rows = Message.objects.filter(pk__in=ids).values_list("pk", "status", "stream_key", "stop_requested")
    found = {pk: (status, key, stop) for pk, status, key, stop in rows}
    connection_release()  # looks come from long streams; the next one may be a request's thread
    return found


# A message leaves the watch this long after the last look-up of its row.
_WATCH_KEEP_SECONDS = 5.0
_watches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one per event loop


class _Watch:
    """The rows of the messages this event loop's answers write or follow, read in one query per look."""

    def __init__(self) -> None:
        self.asked: dict[int, float] = {}  # pk: when its row was last asked for
        self.rows: dict[int, tuple[str, str, bool]] = {}
        self.covered: set[int] = set()  # the pks the last look read
        self.looked_at = -math.inf
        self.lock = asyncio.Lock()

    async def row(self, pk: int) -> tuple[str, str, bool] | None:
        self.asked[pk] = time.monotonic()  # before waiting: the look under way may take it along
        if pk in self.covered and (self.lock.locked() or time.monotonic() - self.looked_at < STOP_POLL_SECONDS):
            # Read lately, or being read now: an answer must not wait on the database (a busy
            # pool) between two pieces of the model's.
            return self.rows.get(pk)
        async with self.lock:
            now = self.asked[pk] = time.monotonic()  # a long wait must not have it left out as stale
            if pk not in self.covered or now - self.looked_at >= STOP_POLL_SECONDS:
                self.asked = {k: t for k, t in self.asked.items() if now - t < _WATCH_KEEP_SECONDS}
                ids = list(self.asked)
                self.rows = await sync_to_async(_message_rows)(ids)
                self.covered, self.looked_at = set(ids), time.monotonic()
        return self.rows.get(pk)


async def message_state(pk: int) -> tuple[str, str, bool] | None:
    """(status, stream key, Stop requested) of a message, or None once it is gone; at most STOP_POLL_SECONDS old.

    Each answer used to read its own row four times a second (and each page following one, once
    an idle second): with hundreds at once, most of a web process's queries and connections
    (bench/concurrency.py). One look now reads the rows of all this event loop's answers.
    """
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _Watch()
    return await watch.row(pk)


async def _next_piece(stream: AsyncIterator[str], message: Message):
    """The model's next piece, None at its end, or _STOP once Stop is pressed while it is awaited.

    A frozen model server sends nothing for KB_LLM_TIMEOUT seconds: Stop must not wait for
    it. The piece is awaited in a task of its own, so it can be given up between two looks
    at the Stop flag; giving it up cancels the task, which closes the model stream.
    """
    ahead = asyncio.ensure_future(anext(stream))
    try:
        while True:
            done, _ = await asyncio.wait({ahead}, timeout=STOP_POLL_SECONDS)
            if done:
                try:
                    return ahead.result()
                except StopAsyncIteration:
                    return None
            if await _stop_requested(message):
                break
    except asyncio.CancelledError:
        with _cleanup():
            await _give_up(ahead)
        raise
    await _give_up(ahead)
    return _STOP


def _cleanup() -> anyio.CancelScope:
    """A scope for what an answer must still do once it is cancelled: end the model stream, store the answer.

    asyncio cancels a task once, and the awaits of its cleanup run. A caller through anyio (the
    MCP SDK, Starlette's task groups) cancels with a cancel scope, which cancels every later
    await as well: the model stream would be closed while still being read ("asynchronous
    generator is already running") and the message left "streaming" for good. anyio's shield
    lets the cleanup finish either way, within CLEANUP_SECONDS.
    """
    return anyio.move_on_after(CLEANUP_SECONDS, shield=True)


@asynccontextmanager
async def _closing(stream):
    """contextlib.aclosing, with the close shielded from a cancel scope's repeated cancellation."""
    try:
        yield stream
    finally:
        with _cleanup():
            await stream.aclose()


async def _give_up(ahead: asyncio.Future) -> None:
    # Wait for the cancelled task to end: the stream can only be closed once it is not running.
    ahead.cancel()
    await asyncio.wait({ahead})
    if not ahead.cancelled():
        ahead.exception()  # retrieved, so asyncio does not log a never-retrieved exception


async def message_answer(
    *, message: Message, sources: list[dict], history=(), checked: bool = False
) -> AsyncIterator[str | verification.Checked]:
    """Stream a claimed message's answer from the model server, then store how it ended.

    The one place answers are generated, for the pages' stream and the JSON API alike. It
    stops when the reader presses Stop (a row flag another process may set), keeps what
    arrived when the model server fails or the reader goes away (close this generator, e.g.
    with aclosing, and the model stream is closed too, which ends generation), and never
    calls the model without a readable source. Each sentence is checked against the sources
    as soon as it is whole; with checked=True those decisions (verification.Checked) are
    yielded among the text pieces, so a page can show them while the answer streams.
    """
    if not sources:
        await sync_to_async(message_finish)(message=message, answer=NO_LONGER_READABLE, status=Message.Status.NO_ANSWER)
        return
    pieces: list[str] = []
    status, error = Message.Status.COMPLETE, ""
    next_check = time.monotonic() + STOP_POLL_SECONDS
    guard = verification.RepetitionGuard(settings.KB_LOOP_REPEATS)
    check = verification.StreamCheck(sources, verification.embed)
    # Off the event loop: embedding a sentence is CPU work that other streams must not wait for.
    ready = sync_to_async(check.ready, thread_sensitive=False)
    # The check under way, if any. The text streams on while a sentence is checked: with many
    # answers at once checks queue for the model, and the reader still reads at the model's pace
    # (the page shows the unchecked rest as a draft); each answer's checks run one at a time.
    checking: asyncio.Future | None = None
    looped = ""  # the text kept once the model repeats itself
    # The model may take minutes: the connection this thread holds goes back now, not when the
    # request (or the task) that asked ends (bench/concurrency.py).
    await sync_to_async(connection_release)()
    try:
        async with _closing(answering.astream_answer(message.question, sources, history)) as stream:
            while True:
                piece = await _next_piece(stream, message)
                if piece is _STOP:
                    status, error = Message.Status.INCOMPLETE, STOPPED
                    break  # leaving the block closes the model stream: generation stops
                if piece is None:
                    break
                if guard.feed(piece):
                    logger.info("message %s: the model repeats itself; generation stops", message.pk)
                    pieces, status, error = [guard.text[: guard.cut]], Message.Status.INCOMPLETE, LOOPING
                    looped = pieces[0]
                    break  # leaving the block closes the model stream: generation stops
                pieces.append(piece)
                yield piece
                whole = check.add(piece)  # a sentence ended that no check has decided yet
                if checking is not None and checking.done():
                    decided, checking = checking.result(), None
                    for sentence in decided if checked else ():
                        yield sentence
                    whole = check.behind()  # the check may have decided all there was
                if checking is None and whole:
                    checking = asyncio.ensure_future(ready())
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + STOP_POLL_SECONDS
                    if await _stop_requested(message):
                        status, error = Message.Status.INCOMPLETE, STOPPED
                        break  # leaving the block closes the model stream: generation stops
    except llm.ModelServerError as exc:
        status = Message.Status.INCOMPLETE if pieces else Message.Status.FAILED
        error = str(exc)
    except (asyncio.CancelledError, GeneratorExit):
        # The reader went away (cancelled while awaiting the model, or closed while its
        # consumer waited to send): the model stream is closed above; keep what arrived.
        if checking is not None:
            checking.cancel()  # its thread finishes the sentence; nobody waits for it
        with _cleanup():
            await sync_to_async(message_finish)(
                message=message, answer="".join(pieces), status=Message.Status.INCOMPLETE, error=DISCONNECTED,
                sources=sources,
            )  # fmt: skip
        raise
    if checking is not None:
        decided = await checking
        for sentence in decided if checked else ():
            yield sentence
    if looped:
        check.keep(looped)  # after the check under way: it may have decided past the cut
    if "".join(pieces).strip():
        for decided in await ready(final=True):
            if checked:
                yield decided
    await sync_to_async(message_finish)(
        message=message, answer="".join(pieces), status=status, error=error, sources=sources, checked=check.decided
    )


def message_answer_start(*, user, message: Message) -> tuple[list[dict], list, bool]:
    """What answering a message needs, read and claimed in one go: (sources, history, claimed).

    Nothing is read for a message that is not pending: only its writer needs its sources.

    The pages' stream and the JSON API call this through one sync_to_async each: every
    separate call waits its turn on the one thread that runs the ORM, before the model
    can be asked for a first token.
    """
    if message.status != Message.Status.PENDING:
        return [], [], False  # being written elsewhere (followed through its relay), or finished
    # Read before claiming: a read that fails leaves the message pending for the next stream.
    sources = selectors.message_sources(user=user, message=message)
    history = selectors.message_history(user=user, conversation=message.conversation, before=message)
    return sources, history, message_claim(message=message)


def message_claim(*, message: Message) -> bool:
    """Take a pending message for answering; False if another stream already has it.

    The claim names the answer's relay stream (kb.answer_relay) in the same update, so a
    reader never follows the stream of an earlier answer to the same message.
    """
    stream_key = f"kb:answer:{message.pk}:{uuid.uuid4().hex}"
    claimed = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.STREAMING, stream_key=stream_key
    )
    if claimed:
        message.status, message.stream_key = Message.Status.STREAMING, stream_key
    return bool(claimed)
