"""Fuzz kb's readers for longer than the tests do: damaged copies of real files, each read in a child process.

    nice -n 5 .venv/bin/python bench/fuzz_readers.py [--inputs N] [--json] [--seed S] [--limit SECONDS] [--keep DIR]

The inputs (2000 by default, spread evenly over PDF, Word, HTML, Markdown, plain text and
ZIP archives of pages) are small real files made here (pypdf, python-docx, hand-written
pages) damaged the ways files get damaged: bits flipped, cut short, junk inserted or
overwritten, runs deleted; inside a ZIP package too (a .docx or an archive written anew with
one member damaged, its namespaces stripped, replaced by XML of another shape, or missing);
plus arbitrary bytes, arbitrary bytes behind the format's magic, markup nested thousands
deep and front matter of the kinds YAML gets wrong. The same --seed gives the same inputs.

Each input is read by a forked child, as a worker would read it (readers.read_bytes; a ZIP
unpacked page by page as an upload is), under a memory limit (2 GiB) and a time limit
(--limit, 10 s). kb's own time limit on reading (KB_READ_TIMEOUT) is turned off in the
child, so a slow input shows as the slowest or as a hang here instead of as a reason. The
report: inputs per format and their outcome (text, a reason, a bug, a crash), the reasons
seen with their counts, bugs (any exception but IngestError: what the tests forbid),
tracebacks logged at INFO or above (what an operator would see), crashes (a child killed by
a signal or out of time), and the slowest input with its time. --keep DIR writes the inputs
behind bugs and crashes there, to reproduce them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import random
import resource
import sys
import time
import traceback
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import _harness

_harness.use_database("kb_readers")  # no query is made; settings only

import django  # noqa: E402 - after the environment is set

django.setup()

from ingestion import archives, readers  # noqa: E402
from ingestion.errors import IngestError  # noqa: E402
from tests.ingestion.fuzz_seeds import (  # noqa: E402 - the seeds and the damage, shared with the tests
    FORMATS,
    MAGIC,
    Seeded,
    damage_bytes,
    damage_member,
    front_matter,
    seeds,
)

NAMES = {
    "pdf": "report.pdf", "docx": "policy.docx", "html": "page.html", "markdown": "page.md", "text": "notes.txt",
    "zip": "export.zip",
}  # fmt: skip
MEMORY_LIMIT = 2 << 30


def make_input(rng: random.Random, fmt: str, by_format: dict[str, bytes]) -> tuple[bytes, str]:
    """One input of the format and how it was made."""
    choose = Seeded(rng)
    choices = ["damaged", "damaged", "damaged", "arbitrary", "magic"]
    if fmt in ("docx", "zip"):
        choices += ["member", "member", "member"]
    if fmt == "html":
        choices += ["nested"]
    if fmt == "markdown":
        choices += ["nested", "front matter"]
    how = rng.choice(choices)
    if how == "damaged":
        return damage_bytes(choose, by_format[fmt])
    if how == "arbitrary":
        return rng.randbytes(rng.randint(0, 4096)), "arbitrary bytes"
    if how == "magic":
        return MAGIC[fmt] + rng.randbytes(rng.randint(0, 4096)), "magic + arbitrary bytes"
    if how == "member":
        return damage_member(choose, by_format[fmt])
    if how == "nested":
        depth = rng.randint(100, 20_000)
        if fmt == "html":
            tag = rng.choice([b"<div>", b"<b><i>", b"<ul><li>", b"<table><tr><td>"])
            return tag * depth + b"deep", f"{tag.decode()} x {depth}"
        tag = rng.choice([b"> ", b"- ", b"* > ", b"["])
        return tag * depth + b"deep", f"{tag.decode()!r} x {depth}"
    return front_matter(choose)


# -- reading in a child ------------------------------------------------------------------------


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.count += 1


def _read(fmt: str, data: bytes) -> list[tuple[str, str]]:
    """[(outcome, detail)]: ("text", chars) or ("reason", text); one per page for a page archive."""
    outcomes: list[tuple[str, str]] = []

    def one(page: bytes, name: str) -> None:
        try:
            extracted = readers.read_bytes(page, name=name, timeout=0)
        except IngestError as error:
            outcomes.append(("reason", str(error)))
        else:
            outcomes.append(("text", str(len(extracted.text))))

    if fmt != "zip" or not archives.is_page_archive(io.BytesIO(data)):
        one(data, NAMES[fmt])
        return outcomes
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            found = archives.pages(archive, archives.limits_from_settings())
        except IngestError as error:
            return [("reason", str(error))]
        outcomes += [("reason", reason) for _name, reason in found.refused]
        for member in found.members:
            page = io.BytesIO()
            try:
                archives.copy_member(archive, member.info, page)
            except IngestError as error:
                outcomes.append(("reason", str(error)))
                continue
            one(page.getvalue(), member.path)
    return outcomes or [("text", "0")]


def _child(conn, fmt: str, data: bytes) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    tracebacks = _Tracebacks()
    logging.getLogger().handlers = [tracebacks]  # counted, not printed: pypdf warns on every damaged file
    started = time.perf_counter()
    try:
        result = {"outcomes": _read(fmt, data)}
    except BaseException as exc:  # noqa: BLE001 - the point: anything but IngestError is a finding
        result = {"bug": f"{type(exc).__name__}: {exc}"[:300], "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = time.perf_counter() - started
    result["tracebacks_logged"] = tracebacks.count
    conn.send(result)
    conn.close()


def run_one(context, fmt: str, data: bytes, limit: float) -> dict:
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, fmt, data), daemon=True)
    started = time.perf_counter()
    child.start()
    send.close()
    result = None
    if receive.poll(limit):
        try:
            result = receive.recv()
        except EOFError:  # the child died before it could answer
            result = None
    child.join(1 if result is not None else 0)
    if child.is_alive():
        child.kill()
        child.join()
        if result is None:
            return {"crash": f"no answer within {limit:g} s (killed)", "seconds": time.perf_counter() - started}
    if result is None:
        code = child.exitcode
        what = f"died by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        return {"crash": what, "seconds": time.perf_counter() - started}
    return result


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=2000, help="inputs in all, spread over the formats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds one input may take before it is killed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", type=Path, help="write the inputs behind bugs and crashes into this folder")
    args = parser.parse_args()

    by_format = seeds()
    for fmt, seed in by_format.items():  # the seeds themselves must read
        assert all(o == "text" for o, _ in _read(fmt, seed)), fmt
    rng = random.Random(args.seed)
    context = multiprocessing.get_context("fork")
    per_format: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    findings: list[dict] = []
    slowest = {"seconds": 0.0}
    started = time.perf_counter()
    for number in range(args.inputs):
        fmt = FORMATS[number % len(FORMATS)]
        data, how = make_input(rng, fmt, by_format)
        result = run_one(context, fmt, data, args.limit)
        counts = per_format[fmt]
        counts["inputs"] += 1
        if "crash" in result or "bug" in result:
            kind = "crash" if "crash" in result else "bug"
            counts[kind + "es" if kind == "crash" else kind + "s"] += 1
            finding = {"input": number, "format": fmt, "made": how, "size": len(data), kind: result[kind]}
            findings.append(finding)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"{number:05d}-{fmt}-{kind}.bin").write_bytes(data)
        else:
            for outcome, detail in result["outcomes"]:
                counts["pages read" if outcome == "text" else "refused with a reason"] += 1
                if outcome == "reason":
                    reasons[fmt][detail] += 1
            counts["tracebacks logged"] += result["tracebacks_logged"]
        if result["seconds"] > slowest["seconds"]:
            slowest = {"seconds": round(result["seconds"], 3), "input": number, "format": fmt, "made": how,
                       "size": len(data)}  # fmt: skip
    report = {
        "command": " ".join(["bench/fuzz_readers.py", *sys.argv[1:]]),
        "cpu": _harness.cpu_name(),
        "seed": args.seed,
        "limit_seconds": args.limit,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "per_format": {fmt: dict(per_format[fmt]) for fmt in FORMATS},
        "reasons": {fmt: dict(reasons[fmt].most_common()) for fmt in FORMATS},
        "findings": findings,
        "slowest": slowest,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    print(f"{report['command']}  (seed {args.seed}, {args.limit:g} s per input, {report['cpu']})")
    print(f"{sum(c['inputs'] for c in per_format.values())} inputs in {report['wall_seconds']} s\n")
    columns = ["inputs", "pages read", "refused with a reason", "bugs", "crashes", "tracebacks logged"]
    print(f"{'format':<10}" + "".join(f"{c:>23}" for c in columns))
    for fmt in FORMATS:
        print(f"{fmt:<10}" + "".join(f"{per_format[fmt][c]:>23}" for c in columns))
    for fmt in FORMATS:
        print(f"\nreasons, {fmt}:")
        for reason, count in reasons[fmt].most_common():
            print(f"  {count:>5}  {reason}")
    print("\nbugs and crashes:" if findings else "\nbugs and crashes: none")
    for finding in findings:
        print(f"  {finding}")
    print(f"\nslowest: {slowest}")


if __name__ == "__main__":
    main()
