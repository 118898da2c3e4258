"""The seed files and the damage that both fuzzers of kb's readers use, kept once here.

tests/ingestion/test_reader_fuzz.py (hypothesis, short, in CI) and bench/fuzz_readers.py
(random.Random, long, by hand) feed the readers damaged copies of the same small real files.
The damage takes its choices from a `Chooser`: `Seeded` wraps a random.Random for the bench;
the tests wrap hypothesis's draw the same way, so one damage routine serves both and the
bench's --seed still gives the inputs it gave before the two were folded together.
"""

from __future__ import annotations

import functools
import io
import random
import re
import zipfile
from collections.abc import Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")

FORMATS = ("pdf", "docx", "html", "markdown", "text", "zip")
MAGIC = {
    "pdf": b"%PDF-1.7\n", "docx": b"PK\x03\x04", "html": b"<!doctype html><html><body>",
    "markdown": b"---\ntitle: ", "text": b"\xef\xbb\xbf", "zip": b"PK\x03\x04",
}  # fmt: skip


# -- seeds: small real files -------------------------------------------------------------------


@functools.cache
def pdf_seed() -> bytes:
    """Three pages with a title, an outline and FlateDecode content: the decompressor is fuzzed too."""
    from pypdf import PdfReader, PdfWriter

    from tests.ingestion.builders import pdf_bytes

    pages = ["Backups\nThe backup runs nightly at 02:00.", "Restores\nRestores are tested (weekly).", "Contacts"]
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(pages))))
    writer.add_metadata({"/Title": "Operations handbook"})
    top = writer.add_outline_item(title="Backups", page_number=0)
    writer.add_outline_item(title="Schedule", page_number=0, parent=top)
    writer.add_outline_item(title="Restores", page_number=1)
    for page in writer.pages:
        page.compress_content_streams()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@functools.cache
def docx_seed() -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = "Security policy"
    document.add_heading("Security Policy", level=0)
    document.add_heading("Passwords", level=1)
    document.add_paragraph("Use a password manager.")
    document.add_paragraph("Twelve characters at least", style="List Bullet")
    document.add_paragraph("No reuse across sites", style="List Number")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Key", "Period"
    table.cell(1, 0).text, table.cell(1, 1).text = "TLS", "1 year"
    document.add_heading("Rotation", level=2)
    document.add_paragraph("Rotate service keys yearly.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


HTML = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Runbook</title>
<style>p{color:red}</style><script>var x = 1;</script></head><body><nav><a href="/">Home</a></nav>
<main><h1>Restore <a class="headerlink" href="#r">#</a></h1><p>Stop the <b>service</b> first.</p>
<h2>Steps</h2><ol><li>Copy the dump</li><li>Run <code>pg_restore</code></li></ol>
<table><tr><th>Disk</th><td>/dev/sdb</td></tr></table><pre>pg_restore -d kb dump</pre>
<p hidden>secret</p><a href="backups.html#top">Backups</a></main><footer>(c) 2024</footer></body></html>"""

MARKDOWN = b"""---
title: Backups
tags: [ops, "db"]
date: 2024-05-01
---
# Backups

Backups run **nightly** at 02:00; see [restore](restore.md).

## Retention

- 7 daily
- 4 weekly

> Keep one copy off site.

```sh
pg_dump kb > kb.sql
```

Setext heading
--------------
Text under it.
"""

TEXT = "Caf\u00e9 notes\r\nThe backup runs nightly.\r\n\r\nRestores are tested weekly \u2014 on Fridays.\n".encode()


@functools.cache
def zip_seed() -> bytes:
    """A ZIP of pages as an export makes one: Markdown, HTML and text, an image to pass over, macOS litter."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ops/backups.md", MARKDOWN)
        archive.writestr("ops/restore.html", HTML)
        archive.writestr("ops/notes.txt", TEXT)
        archive.writestr("images/logo.png", b"\x89PNG\r\n\x1a\n")
        archive.writestr("__MACOSX/._backups.md", b"\x00\x05\x16\x07")
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    """One seed a format, keyed as FORMATS."""
    return {"pdf": pdf_seed(), "docx": docx_seed(), "html": HTML, "markdown": MARKDOWN, "text": TEXT, "zip": zip_seed()}


# -- where the choices come from ---------------------------------------------------------------


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int:
        """An integer from low to high, both included."""

    def choice(self, options: Sequence[T]) -> T: ...

    def junk(self, low: int, high: int) -> bytes:
        """Arbitrary bytes, low to high of them."""

    def coin(self) -> bool: ...


class Seeded:
    """A Chooser over random.Random, drawing exactly what the bench drew before it shared this module."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def junk(self, low: int, high: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(low, high))

    def coin(self) -> bool:
        return self.rng.random() < 0.5


# -- damage ----------------------------------------------------------------------------------


def damage_bytes(choose: Chooser, data: bytes) -> tuple[bytes, str]:
    """The data with one to four of: a bit flipped, truncated, junk inserted or overwritten, a run deleted; and how."""
    data = bytearray(data)
    done = []
    for _ in range(choose.integer(1, 4)):
        if not data:
            break
        at = choose.integer(0, len(data) - 1)
        kind = choose.choice(["flip", "truncate", "insert", "overwrite", "delete"])
        if kind == "flip":
            data[at] ^= 1 << choose.integer(0, 7)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = choose.junk(1, 64)
        elif kind == "overwrite":
            junk = choose.junk(1, 64)
            data[at : at + len(junk)] = junk
        else:
            del data[at : at + choose.integer(1, 512)]
        done.append(f"{kind}@{at}")
    return bytes(data), " ".join(done)


_NAMESPACE = re.compile(rb'\sxmlns(:\w+)?="[^"]*"')


def damage_member(choose: Chooser, package: bytes) -> tuple[bytes, str]:
    """A ZIP package (a .docx, an archive) with one member damaged and the package written anew, checksums right.

    The damage is to the bytes, or to the structure other tools get wrong: XML without its
    namespaces, a part replaced by XML of another shape, a part missing.
    """
    with zipfile.ZipFile(io.BytesIO(package)) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    name = choose.choice(sorted(members))
    kind = choose.choice(["bytes", "bytes", "no namespaces", "other xml", "missing"])
    if kind == "bytes":
        members[name], how = damage_bytes(choose, members[name])
        kind = f"bytes ({how})"
    elif kind == "no namespaces":
        members[name] = _NAMESPACE.sub(b"", members[name])
    elif kind == "other xml":
        members[name] = choose.choice([b"<Types/>", b'<?xml version="1.0"?><root><child/></root>', b"<a>"])
    else:
        del members[name]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for member, data in members.items():
            target.writestr(member, data)
    return out.getvalue(), f"member {name}: {kind}"


# Front matter of the kinds people and tools write wrong: impossible dates, huge numbers,
# aliases that multiply ("billion laughs"), a mapping nested deep, tags safe_load refuses.
_YAML_VALUES = [
    b"2024-13-45", b"2024-02-30 25:61:00", b"1" * 5000, b"!!python/object:os.system {}", b"&a [*a]",
    b"[" * 200 + b"]" * 200, b"{a: {b: {c: [1, 2, {d: e}]}}}", b'"unterminated', b"- - - -", b"? [a]\n: b",
    b"!!binary aGVsbG8=", b".nan", b"~", b"0x1F", b"'x",
]  # fmt: skip


def front_matter(choose: Chooser) -> tuple[bytes, str]:
    """A Markdown page whose front matter is one of those, with the aliases or without; and which."""
    lines = [b"---"] + [b"k%d: %s" % (n, choose.choice(_YAML_VALUES)) for n in range(choose.integer(1, 6))]
    laughs = choose.coin()
    if laughs:
        lines.append(b"l0: &l0 [x, x, x, x, x, x, x, x, x]")
        lines += [b"l%d: &l%d [%s]" % (i, i, b", ".join([b"*l%d" % (i - 1)] * 9)) for i in range(1, 9)]
    return b"\n".join([*lines, b"---"]) + b"\n# Page\n\nText.\n", "front matter" + (" + aliases" if laughs else "")
