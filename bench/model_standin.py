"""A stand-in for the model server, for bench/concurrency.py: OpenAI-style streaming chat at a fixed pace.

    .venv/bin/python bench/model_standin.py --port 8099 [--tokens 400] [--rate 30]

It plays vLLM's or llama.cpp's `POST /v1/chat/completions` with `"stream": true` (the shape
kb.llm reads), emitting `--tokens` words per answer at `--rate` per second per stream, so a
benchmark measures kb and not a model. Each stream's pace is kept against its own clock (token
i leaves at first + i / rate), so a late wake-up does not slow the stream down.

Streams wait for a gate before their first token: `POST /release` opens it, so that every
stream of a run is connected before any token flows (the streams then overlap for the whole
answer instead of for part of it). `POST /reset` closes the gate and forgets the records;
`GET /stats` returns, per answer, the tag found in its prompt (`bench#N`), when its first and
last token left, how many it sent, and this process's CPU seconds.

asyncio rather than tests/standins.py's thread per connection: hundreds of sleeping threads
waking 30 times a second would cost the shared cores more than kb's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

TAG = re.compile(rb"bench#(\d+)")
# Sentences of an answer: whole ones (so kb checks each as it completes, as it does a real
# answer's), none repeated within 400 words (kb stops a model that repeats itself).
SUBJECTS = ["The nightly backup", "The restore script", "The on-call engineer", "The VPN gateway",
            "The release train", "The incident review", "The laptop refresh", "The expense report",
            "The access request", "The database failover"]  # fmt: skip
PREDICATES = ["starts at {n}:00 and keeps {m} copies on the archive volume",
              "needs the approval of a manager before step {n} of the runbook",
              "is described in section {n} of the operations handbook, with {m} examples",
              "takes about {m} minutes when the cluster holds {n} replicas"]  # fmt: skip


def answer_words(count: int, *, sentences: bool = True, seed: int = 0) -> list[str]:
    """`count` words of plain prose, sentence after sentence, each sentence different (and each seed's).

    Without `sentences`, the same words with no full stops: one sentence that ends with the answer.
    """
    words: list[str] = []
    i = 0
    while len(words) < count:
        subject, predicate = SUBJECTS[i % len(SUBJECTS)], PREDICATES[(i // len(SUBJECTS)) % len(PREDICATES)]
        words += f"{subject} {predicate.format(n=(i + seed) % 24 + 1, m=i + 2 + 50 * seed)}.".split()
        i += 1
    return [(w if sentences else w.rstrip(".")) + " " for w in words[:count]]


class Standin:
    def __init__(self, tokens: int, rate: float, sentences: bool):
        self.tokens, self.sentences = tokens, sentences
        self.interval = 1.0 / rate
        self.gate = asyncio.Event()
        self.records: list[dict] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                if method == b"POST" and path.endswith(b"/chat/completions"):
                    await self.stream(body, writer)
                elif path == b"/release":
                    self.gate.set()
                    await self.json(writer, {"released": True})
                elif path == b"/reset":
                    self.gate.clear()
                    self.records = []
                    await self.json(writer, {"reset": True})
                elif path == b"/stats":
                    await self.json(writer, {"records": self.records, "cpu_s": time.process_time()})
                else:  # /health, /v1/models
                    await self.json(writer, {"object": "list", "data": [{"id": "bench-standin", "object": "model"}]})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def json(self, writer: asyncio.StreamWriter, payload: dict) -> None:
        data = json.dumps(payload).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
        await writer.drain()

    async def stream(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        tag = TAG.search(body)
        # Each answer its own sentences, as each reader's question has its own answer: kb
        # cannot reuse one answer's checks for another's.
        words = answer_words(self.tokens, sentences=self.sentences, seed=int(tag.group(1)) + 1 if tag else 0)
        record = {"tag": int(tag.group(1)) if tag else None, "arrived": time.monotonic(),
                  "first": None, "last": None, "sent": 0, "complete": False}  # fmt: skip
        self.records.append(record)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await self.gate.wait()
        start = time.monotonic()
        for i, word in enumerate(words):
            delay = start + i * self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(_chunk(_event(word)))
            await writer.drain()  # raises once kb has closed the stream: generation stops
            record["last"] = time.monotonic()
            record["first"] = record["first"] or record["last"]
            record["sent"] += 1
        writer.write(_chunk(_event("", finish="stop")) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        record["complete"] = True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(content: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}
    chunk = {"id": "bench-standin", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "bench-standin", "choices": [choice]}  # fmt: skip
    return b"data: %s\n\n" % json.dumps(chunk).encode()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rate", type=float, default=30.0, help="tokens per second per stream")
    parser.add_argument(
        "--answer",
        choices=["prose", "words"],
        default="prose",
        help="prose: sentences (kb checks each as it ends); words: no full stop until the end",
    )
    args = parser.parse_args()
    standin = Standin(args.tokens, args.rate, args.answer == "prose")
    server = await asyncio.start_server(standin.serve, "127.0.0.1", args.port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
