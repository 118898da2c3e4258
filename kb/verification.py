"""kb vouches for what it shows: answers checked against their sources, sentence by sentence.

No model is trusted to cite. A generated answer is split into sentences (and code blocks);
each is scored against the retrieved passages with the embedding model already loaded for
questions and with lexical evidence. A code identifier, option or number that appears in no
passage is strong evidence of invention and makes a sentence unsupported whatever its
similarity. A supported sentence gets the [n] of its best passage (a wrong number the model
wrote is replaced, a missing one added); an unsupported one is never shown as cited.

The extractive answer uses the same pieces the other way round: the source sentences that
best answer the question, verbatim, each with its [n], ready before the model says anything.

Written here rather than taken from a library: fact-checking models (NLI, cross-encoders)
do not install offline here, and the signals that matter most for a wiki bot (invented
identifiers and numbers) are lexical; the embedding model is the one kb already runs.
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
from nltk.stem.snowball import SnowballStemmer  # the English Snowball stemmer: pure Python, no data

from ingestion import embeddings, pipeline
from ingestion.errors import EmbedderUnavailable
from ingestion.onnx_model import on_single_threads

# Thresholds on the cosine of all-MiniLM-L6-v2 between a claim and a source sentence, chosen
# on the dev half of bench/verification_dev.py's pairs from the Python manual (the most claims
# vouched for with at most 5 % false support; docs/benchmarks.md has the held-out figures).
SUPPORT_COSINE = 0.74  # alone enough: the claim says what a source sentence says
SUPPORT_COSINE_WITH_WORDS = 0.35  # enough when most of its content words are in that source
SUPPORT_WORDS = 0.8
MIN_CONTENT_WORDS = 2  # fewer: a connective ("Here is how:"), neither claimed nor cited
# Below this cosine between the question and the best source sentence, there is no extractive
# answer: kb says it found nothing rather than quote a passage that does not answer.
EXTRACT_COSINE = 0.35

_CITE = re.compile(r"\s*\[(\d{1,3})\]")
_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
# A sentence ends at . ! or ? followed by space and what can start a sentence, or at a line break
# between list items and paragraphs. Abbreviations and version numbers ("e.g.", "3.11") do not
# end one: the next character after them is not a space and a capital.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(`*\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)")
# Every sentence end and code fence above holds one of these: without one, nothing is whole yet.
_MAY_END = re.compile(r"[.!?\n`~]")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+|^#+\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_'-]+")
# What a model invents: call syntax, dotted names, snake_case and CamelCase names, options, numbers.
_IDENTIFIER = re.compile(
    r"`([^`\n]{1,80})`"  # anything in backticks
    r"|(?<![\w.-])(--?[A-Za-z][\w-]+)"  # -x, --option
    r"|\b([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)(?:\(\))?"  # module.attr, obj.method()
    r"|\b([A-Za-z_]\w*)\(\)"  # call()
    r"|\b([a-z]+_[a-z0-9_]+)\b"  # snake_case
    r"|\b([a-z]+[A-Z]\w*|[A-Z][a-z0-9]+[A-Z]\w*)\b"  # camelCase, CamelCase
    r"|(?<![\w.])(\d+(?:[.,:]\d+)*)(?![\w.]\d)"  # 3, 3.11, 02:00, 1,000
)
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can cannot could did do does doing down during each few for from further had has have
    having he her here hers him his how i if in into is it its itself just me more most my no nor not now of
    off on once only or other our out over own same she should so some such than that the their them then there
    these they this those through to too under until up use used using very was we were what when where which
    while who whom why will with would you your yes can't don't isn't it's knowledge base sources source
    answer question here's there's that's let's what's example examples following below above follows""".split()
)


# Sentences embedded lately, per embedder, as float32 rows (1.5 KB each at 384 dimensions): a
# question's passages are embedded when its quoted answer is worked out and again when the
# model's answer is checked, and people asking at the same time are often given the same
# passages (bench/concurrency.py).
RECENT_VECTORS = 10_000
_recent: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()  # checks run in several threads at once


class _Batcher:
    """One model call for the sentences that several answers' checks ask for at the same moment.

    A web process streaming many answers checks a sentence for each of them every moment, in
    threads of its own. Called one by one, the model's fixed cost per call (tokenising, a session
    run, threads woken) is paid for each sentence, and the calls compete for the same cores;
    together, one call embeds them all (bench/concurrency.py). No timer: the first caller runs
    at once, alone, and those that arrive while the model is busy go together in the next call,
    run by one of them. Written here: dynamic-batching libraries bring a thread, an event loop
    or a server of their own for what is a condition and a list.
    """

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.changed = threading.Condition()
        self.waiting: list[_Asked] = []
        self.busy = False

    def embed(self, texts: list[str]) -> np.ndarray:
        asked = _Asked(texts)
        with self.changed:
            self.waiting.append(asked)
            while not asked.done:
                if self.busy:
                    self.changed.wait()
                    continue
                self.busy, batch, self.waiting = True, self.waiting, []
                self.changed.release()
                try:
                    _embed_together(self.embedder, batch)
                finally:
                    self.changed.acquire()
                    self.busy = False
                    self.changed.notify_all()
        if asked.error is not None:
            raise asked.error
        return asked.vectors


@dataclass
class _Asked:
    texts: list[str]
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


def _embed_together(embedder, batch: list[_Asked]) -> None:
    """Embed all that `batch` asks in one call; each request gets its rows, or the call's error."""
    texts = list(dict.fromkeys(t for asked in batch for t in asked.texts))
    try:
        with on_single_threads():  # the other answers' streams need the other cores
            rows = np.asarray(pipeline.embed_texts(texts, embedder=embedder), dtype=np.float32)
    except BaseException as exc:  # every caller learns it (EmbedderUnavailable: checks go on lexically)
        for asked in batch:
            asked.error, asked.done = exc, True
        return
    where = {t: i for i, t in enumerate(texts)}
    for asked in batch:
        asked.vectors, asked.done = rows[[where[t] for t in asked.texts]], True


_batchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batcher(embedder) -> _Batcher:
    with _recent_lock:
        batcher = _batchers.get(embedder)
        if batcher is None:
            batcher = _batchers[embedder] = _Batcher(embedder)
        return batcher


def embed(texts: list[str]) -> np.ndarray:
    """Vectors (rows) from the configured model's question embedder, those of sentences embedded lately reused."""
    embedder = embeddings.get_embedder(None, questions=True)
    with _recent_lock:
        recent = _recent.setdefault(embedder, OrderedDict())
        known = {t: recent[t] for t in texts if t in recent}
        for text in known:
            recent.move_to_end(text)
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        fresh = _batcher(embedder).embed(missing)
        with _recent_lock:
            for text, row in zip(missing, fresh, strict=True):
                recent[text] = known[text] = row
            while len(recent) > RECENT_VECTORS:
                recent.popitem(last=False)
    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    return np.stack([known[t] for t in texts])


@dataclass
class Sentence:
    """One sentence (or code block) of an answer and what kb decided about it."""

    text: str  # as the model wrote it, its [n] removed
    citations: list[int] = field(default_factory=list)  # the [n] kb vouches for; none when unsupported
    supported: bool = True
    score: float = 0.0  # the best cosine to a source sentence
    code: bool = False
    written: list[int] = field(default_factory=list)  # the [n] the model wrote
    unknown: list[str] = field(default_factory=list)  # identifiers and numbers found in no source

    def as_json(self) -> dict:
        return asdict(self)


def split(answer: str) -> list[tuple[str, bool]]:
    """(text, is_code) for each sentence and fenced code block of an answer, in order."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for fence in _FENCE.finditer(answer):
        pieces += _sentences(answer[at : fence.start()])
        pieces.append((fence.group(0).strip(), True))
        at = fence.end()
    pieces += _sentences(answer[at:])
    return pieces


def _sentences(text: str) -> list[tuple[str, bool]]:
    return [(s.strip(), False) for s in _SENTENCE_END.split(text) if s and s.strip()]


def cited(text: str) -> tuple[str, list[int]]:
    """The text without its [n] markers, and the numbers they named."""
    numbers = [int(n) for n in _CITE.findall(text)]
    return _CITE.sub("", text).strip(), numbers


def identifiers(text: str) -> set[str]:
    """What in `text` a source must contain verbatim for kb to vouch for it: names, options, numbers."""
    found = set()
    for match in _IDENTIFIER.finditer(_LIST_MARK.sub("", text)):
        value = next(g for g in match.groups() if g)
        value = value.strip().rstrip(".,;:")
        if value.endswith("()"):
            value = value[:-2]
        if "." in value and all(len(part) <= 1 for part in value.split(".")):
            continue  # an abbreviation (i.e., e.g.), not a dotted name
        if len(value) > 1 or value.isdigit():
            found.add(value)
    return found


_STEMMER = SnowballStemmer("english")


@functools.lru_cache(maxsize=50_000)
def _stem(word: str) -> str:
    return _STEMMER.stem(word)


def content_words(text: str) -> set[str]:
    """The stems of the words that carry meaning: 'nightly' and 'night' count as the same word."""
    return {_stem(w) for w in {w.lower().strip("'-") for w in _WORD.findall(text)} - _STOPWORDS}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


def _unit(vectors) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


@dataclass
class Evidence:
    """The sources split into sentences and embedded once, for checking many sentences against them."""

    numbers: list[int]  # the [n] of each source, in order
    texts: list[str]  # each source's whole text, normalised for verbatim look-ups
    words: list[set[str]]  # each source's content words
    sentences: list[tuple[int, str]]  # (index of its source, sentence)
    vectors: np.ndarray  # one unit row per source sentence

    @classmethod
    def of(cls, sources: list[dict], embed) -> Evidence:
        """`embed` None: lexical evidence only (the embedding model is unavailable), so no claim is vouched for."""
        sentences = [
            (i, text) for i, source in enumerate(sources) for text, _ in _sentences(source["text"]) if len(text) > 3
        ]
        vectors = _unit(embed([t for _, t in sentences])) if sentences and embed else np.zeros((0, 1), np.float32)
        return cls(
            numbers=[s["n"] for s in sources],
            texts=[_normalise(s["text"]) for s in sources],
            words=[content_words(s["text"]) for s in sources],
            sentences=sentences,
            vectors=vectors,
        )

    def best(self, vector: np.ndarray) -> tuple[list[float], list[int]]:
        """Per source: the best cosine of any of its sentences to `vector`, and that sentence's index."""
        scores = [-1.0] * len(self.numbers)
        which = [-1] * len(self.numbers)
        if len(self.sentences):
            for row, cosine in enumerate(self.vectors @ vector):
                source = self.sentences[row][0]
                if cosine > scores[source]:
                    scores[source], which[source] = float(cosine), row
        return scores, which


def _supports(cosine: float, overlap: float) -> bool:
    return cosine >= SUPPORT_COSINE or (cosine >= SUPPORT_COSINE_WITH_WORDS and overlap >= SUPPORT_WORDS)


def verify(answer: str, sources: list[dict], embed, evidence: Evidence | None = None) -> list[Sentence]:
    """Each sentence and code block of `answer`, decided against `sources` ({"n", "text"}, best first)."""
    evidence = evidence or Evidence.of(sources, embed)
    pieces = [(cited(text), code) for text, code in split(answer)]
    claims = [i for i, ((text, _), code) in enumerate(pieces) if not code and text]
    vectors = _unit(embed([pieces[i][0][0] for i in claims])) if claims and evidence.numbers and embed else None
    decided: list[Sentence] = []
    for i, ((text, written), code) in enumerate(pieces):
        if not text:
            continue
        sentence = Sentence(text=text, written=written, code=code)
        sentence.unknown = sorted(x for x in identifiers(text) if not _found(x, evidence))
        if code:
            _decide_code(sentence, evidence)
        else:
            vector = vectors[claims.index(i)] if vectors is not None else None
            _decide_claim(sentence, evidence, vector)
        decided.append(sentence)
    return decided


def _found(identifier: str, evidence: Evidence) -> bool:
    needle = _normalise(identifier)
    return any(needle in text for text in evidence.texts)


def _decide_claim(sentence: Sentence, evidence: Evidence, vector) -> None:
    words = content_words(sentence.text)
    if len(words) < MIN_CONTENT_WORDS and not sentence.unknown and not identifiers(sentence.text):
        sentence.supported = True  # a connective: nothing claimed, nothing cited
        return
    if vector is None:
        sentence.supported = False
        return
    scores, _ = evidence.best(vector)
    overlaps = [len(words & w) / max(len(words), 1) for w in evidence.words]
    backing = [n for n, c, o in zip(evidence.numbers, scores, overlaps, strict=True) if _supports(c, o)]
    best = max(range(len(scores)), key=lambda k: scores[k] + 0.2 * overlaps[k])
    sentence.score = round(max(scores), 4)
    sentence.supported = bool(backing) and not sentence.unknown
    if sentence.supported:
        kept = [n for n in sentence.written if n in backing]
        sentence.citations = kept or [evidence.numbers[best] if evidence.numbers[best] in backing else backing[0]]


def _decide_code(sentence: Sentence, evidence: Evidence) -> None:
    names = identifiers(sentence.text.strip("`~"))
    sentence.supported = not sentence.unknown
    if sentence.supported:
        counts = [sum(1 for x in names if _normalise(x) in text) for text in evidence.texts]
        best = max(range(len(counts)), key=counts.__getitem__) if counts else None
        if best is not None and (counts[best] or not names):
            sentence.citations = [evidence.numbers[best]]
        sentence.score = 1.0


def compose(sentences: list[Sentence], *, hide_unsupported: bool = False) -> str:
    """The answer as kb shows it: each sentence with the [n] kb vouches for, unsupported ones marked."""
    out: list[str] = []
    for sentence in sentences:
        if sentence.code:
            text = sentence.text if sentence.supported else f"{UNSUPPORTED_OPEN}{sentence.text}{UNSUPPORTED_CLOSE}"
            if sentence.supported or not hide_unsupported:
                out.append("\n" + text + "\n")
            continue
        if not sentence.supported:
            if not hide_unsupported:
                out.append(f"{UNSUPPORTED_OPEN}{sentence.text}{UNSUPPORTED_CLOSE}")
            continue
        marks = "".join(f" [{n}]" for n in sentence.citations)
        out.append(_with_marks(sentence.text, marks))
    return _join(out)


def _with_marks(text: str, marks: str) -> str:
    # The [n] goes before the closing punctuation, as a reader expects: "runs at 02:00 [1]."
    match = re.search(r"[.!?:;]+[\"')]*$", text)
    return text[: match.start()] + marks + text[match.start() :] if match else text + marks


def _join(parts: list[str]) -> str:
    text, after_block = "", False
    for part in parts:
        bare = part.lstrip(UNSUPPORTED_OPEN)
        block = part.startswith("\n")
        item = bool(_LIST_MARK.match(bare))
        if not text:
            separator = ""
        elif block or after_block:
            separator = "\n\n"
        elif item:
            separator = "\n"
        else:
            separator = " "
        text += separator + part.strip("\n")
        after_block = block
    return text.strip()


# Private-use characters: they survive Markdown and the sanitiser, and no source or model writes them.
UNSUPPORTED_OPEN = "\ue000"
UNSUPPORTED_CLOSE = "\ue001"


def counts(sentences: list[Sentence]) -> dict:
    """How many claims (not connectives or code) were supported, unsupported, and cited."""
    claims = [s for s in sentences if s.citations or not s.supported]
    return {
        "sentences": len(sentences),
        "claims": len(claims),
        "supported": sum(1 for s in claims if s.supported),
        "unsupported": sum(1 for s in claims if not s.supported),
    }


def extract(question: str, sources: list[dict], embed, *, most: int = 3, evidence: Evidence | None = None) -> dict:
    """The one to three source sentences that best answer the question, verbatim, each with its [n].

    Returns {"sentences": [{"text", "citations"}], "score": the best cosine}. Candidates
    come from every source; a sentence scores by its cosine to the question plus the share
    of the question's content words it holds. Sentences close to the best one follow it,
    in their sources' order.
    """
    evidence = evidence or Evidence.of(sources, embed)
    if not evidence.sentences:
        return {"sentences": [], "score": 0.0}
    question_vector = _unit(embed([question]))[0]
    wanted = content_words(question)
    scored = []
    for row, (source, text) in enumerate(evidence.sentences):
        words = content_words(text)
        if len(words) < 3 or len(text) > 600 or text.startswith("#"):
            continue
        cosine = float(evidence.vectors[row] @ question_vector)
        overlap = len(words & wanted) / max(len(wanted), 1)
        scored.append((cosine + 0.3 * overlap, cosine, row, source, text))
    if not scored:
        return {"sentences": [], "score": 0.0}
    scored.sort(reverse=True)
    if scored[0][1] < EXTRACT_COSINE:
        return {"sentences": [], "score": round(scored[0][1], 4)}
    top = scored[0][0]
    chosen = [s for s in scored[:most] if s[0] >= top - 0.08]
    chosen.sort(key=lambda s: (s[3], s[2]))  # in reading order
    return {
        "sentences": [{"text": _LIST_MARK.sub("", text).strip(), "citations": [evidence.numbers[source]]}
                      for _, _, _, source, text in chosen],
        "score": round(scored[0][1], 4),
    }  # fmt: skip


# One unit of an answer for the repetition guard: a sentence or a line.
_UNIT = re.compile(r"[^\n.!?]*[.!?\n]")


class RepetitionGuard:
    """Notices a model looping: the same sentence or code line written `repeats` times.

    feed() each piece as it streams; it returns True once the answer loops, and `cut` is
    then where the first repetition began, so what is kept reads once.
    """

    def __init__(self, repeats: int):
        self.repeats = max(2, repeats)
        self.text = ""
        self.seen: dict[str, list[int]] = {}
        self.done_to = 0  # text before this offset has been split into units already
        self.cut: int | None = None

    def feed(self, piece: str) -> bool:
        self.text += piece
        # A unit ends at a terminator: a piece without one ends none, and the text since the
        # last one is not searched again. Searched at every piece, a long sentence cost time
        # quadratic in its length: 46 ms a piece at 400 words (bench/concurrency.py).
        last = max(map(piece.rfind, ".!?\n"))
        if last < 0:
            return False
        for match in _UNIT.finditer(self.text, self.done_to, len(self.text) - len(piece) + last + 1):
            start = match.start()
            unit = re.sub(r"\s+", " ", match.group(0)).strip().lower()
            self.done_to = match.end()
            if len(unit) < 12 or unit.strip("`~-*#. ") == "":
                continue
            starts = self.seen.setdefault(unit, [])
            starts.append(start)
            if len(starts) >= self.repeats:
                self.cut = starts[1]
                return True
        return False


_FENCE_LINE = re.compile(r"^(```|~~~)", re.M)


def complete_prefix(text: str, start: int = 0) -> int:
    """The offset up to which `text` (from `start`) holds only whole sentences and closed code blocks.

    A sentence is whole once the next one has begun; nothing inside a code block still open is.
    """
    tail = text[start:]
    opened = list(_FENCE_LINE.finditer(tail))
    limit = opened[-1].start() if len(opened) % 2 else len(tail)
    blocks = [(m.start(), m.end()) for m in _FENCE.finditer(tail[:limit])]
    best = max((end for _, end in blocks), default=0)
    for boundary in _SENTENCE_END.finditer(tail[:limit]):
        if not any(a <= boundary.start() < b for a, b in blocks):
            best = max(best, boundary.start())
    return start + best


@dataclass
class Checked:
    """A sentence decided while the answer streams, and how far into the answer's text it reaches."""

    sentence: Sentence
    upto: int

    def as_json(self) -> dict:
        return {"sentence": self.sentence.as_json(), "upto": self.upto}

    @classmethod
    def from_json(cls, data: dict) -> Checked:
        return cls(sentence=Sentence(**data["sentence"]), upto=int(data["upto"]))


class StreamCheck:
    """Checks an answer while it streams: each sentence as soon as it is whole, each once.

    add() the pieces; ready() (CPU work: run it off the event loop) decides the sentences
    completed since the last call, or with final=True everything left.
    """

    def __init__(self, sources: list[dict], embed):
        self.sources, self.embed = sources, embed
        self.text = ""
        self.done = 0
        self.decided: list[Sentence] = []
        self._evidence: Evidence | None = None

    def add(self, piece: str) -> bool:
        """Add a piece; True when a sentence has been completed by it."""
        self.text += piece
        return self.behind()

    def behind(self) -> bool:
        """Whether a sentence is whole that no check has decided yet."""
        # Asked at every piece: a text with no mark that can end a sentence or a code block since
        # the last decided one (a long list, say) is not scanned again and again from its start.
        if _MAY_END.search(self.text, self.done) is None:
            return False
        return complete_prefix(self.text, self.done) > self.done

    def keep(self, text: str) -> None:
        """The answer is cut back to `text` (a loop removed): decide it again from the start if need be."""
        if self.done > len(text):
            self.done, self.decided = 0, []
        self.text = text

    def ready(self, *, final: bool = False) -> list[Checked]:
        cut = len(self.text) if final else complete_prefix(self.text, self.done)
        if cut <= self.done:
            return []
        segment, self.done = self.text[self.done : cut], cut
        try:
            new = self._verify(segment)
        except EmbedderUnavailable:
            # Without the embedding model only the lexical evidence is left: kb vouches for nothing.
            self.embed, self._evidence = None, None
            new = self._verify(segment)
        self.decided += new
        return [Checked(sentence=s, upto=cut) for s in new]

    def _verify(self, segment: str) -> list[Sentence]:
        if self._evidence is None:
            self._evidence = Evidence.of(self.sources, self.embed)
        return verify(segment, self.sources, self.embed, self._evidence)
