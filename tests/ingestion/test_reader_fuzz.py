"""Every reader, fed arbitrary bytes or a damaged copy of a real file, returns text or says why not.

Property: reading either returns an Extracted or raises IngestError whose text is a sentence
for a person (no exception names, no "unexpected"); never any other exception. The seeds are
small real files made here (a PDF written by pypdf, a .docx by python-docx, HTML, Markdown,
plain text, a ZIP of Markdown pages); the damage is bit flips, truncation, inserted or
overwritten junk and deleted runs, on the file's bytes or inside one member of a ZIP package
(so the XML parsers behind the ZIP's checksums are reached too). Derandomized, no example
database: CI sees the same inputs every run. bench/fuzz_readers.py runs the long version.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion import archives, readers
from ingestion.errors import IngestError
from ingestion.readers import Extracted

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
READ_TIMEOUT = 20.0  # seconds; far above any of these small files, so a hang shows as a reason here


# -- seeds -----------------------------------------------------------------------------------


@functools.cache
def pdf_seed() -> bytes:
    from pypdf import PdfReader, PdfWriter

    from tests.ingestion.builders import pdf_bytes

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(["Backups run nightly.", "Restores (weekly)."]))))
    writer.add_metadata({"/Title": "Operations"})
    writer.add_outline_item(title="Backups", page_number=0)
    writer.add_outline_item(title="Restores", page_number=1)
    for page in writer.pages:
        page.compress_content_streams()  # FlateDecode: the decompressor is fuzzed too
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@functools.cache
def docx_seed() -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = "Policy"
    document.add_heading("Passwords", level=1)
    document.add_paragraph("Use a password manager.")
    document.add_paragraph("Twelve characters at least", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Key", "Period"
    table.cell(1, 0).text, table.cell(1, 1).text = "TLS", "1 year"
    document.add_heading("Rotation", level=2)
    document.add_paragraph("Rotate service keys yearly.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


HTML = b"""<!doctype html><html><head><title>Runbook</title></head><body><nav>Home</nav>
<main><h1>Restore</h1><p>Stop the <b>service</b> first.</p><h2>Steps</h2><ol><li>Copy</li><li>Check</li></ol>
<table><tr><th>Disk</th><td>/dev/sdb</td></tr></table><pre>pg_restore -d kb dump</pre>
<a href="backups.html#top">Backups</a></main><footer>(c)</footer></body></html>"""

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

```sh
pg_dump kb > kb.sql
```
"""

TEXT = "Caf\u00e9 notes\r\nThe backup runs nightly.\r\n\r\nRestores are tested weekly \u2014 on Fridays.\n".encode()


@functools.cache
def zip_seed() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ops/backups.md", MARKDOWN)
        archive.writestr("ops/restore.md", "# Restore\n\nStop the service first.\n")
        archive.writestr("ops/notes.txt", TEXT)
        archive.writestr("images/logo.png", b"\x89PNG\r\n\x1a\n")
    return out.getvalue()


# -- damage ----------------------------------------------------------------------------------


@st.composite
def damaged_bytes(draw, seed: bytes) -> bytes:
    """The seed with one to four of: a bit flipped, truncated, junk inserted or overwritten, a run deleted."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "delete"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            junk = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(junk)] = junk
        else:
            del data[at : at + draw(st.integers(1, 512))]
    return bytes(data)


_NAMESPACE = re.compile(rb'\sxmlns(:\w+)?="[^"]*"')


@st.composite
def damaged_member(draw, package: bytes) -> bytes:
    """A ZIP package (a .docx, an archive) with one member damaged and the package written anew, checksums right.

    The damage is to the bytes, or to the structure other tools get wrong: XML without its
    namespaces, a part replaced by XML of another shape, a part missing.
    """
    with zipfile.ZipFile(io.BytesIO(package)) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    name = draw(st.sampled_from(sorted(members)))
    kind = draw(st.sampled_from(["bytes", "bytes", "no namespaces", "other xml", "missing"]))
    if kind == "bytes":
        members[name] = draw(damaged_bytes(members[name]))
    elif kind == "no namespaces":
        members[name] = _NAMESPACE.sub(b"", members[name])
    elif kind == "other xml":
        members[name] = draw(st.sampled_from([b"<Types/>", b'<?xml version="1.0"?><root><child/></root>', b"<a>"]))
    else:
        del members[name]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for member, data in members.items():
            target.writestr(member, data)
    return out.getvalue()


def nested(open_tag: bytes, close_tag: bytes = b"", *, most: int = 3000):
    """Markup nested n deep: what machine-made or hostile files do to recursive parsers."""
    return st.integers(1, most).map(lambda n: open_tag * n + b"deep" + close_tag * n)


# Front matter of the kinds people and tools write wrong: impossible dates, huge numbers,
# aliases that multiply ("billion laughs"), a mapping nested deep, tags safe_load refuses.
_YAML_VALUES = [
    b"2024-13-45", b"2024-02-30 25:61:00", b"1" * 5000, b"!!python/object:os.system {}", b"&a [*a]",
    b"[" * 200 + b"]" * 200, b"{a: {b: {c: [1, 2, {d: e}]}}}", b'"unterminated', b"- - - -", b"? [a]\n: b",
    b"!!binary aGVsbG8=", b".nan", b"~", b"0x1F", b"'x",
]  # fmt: skip


@st.composite
def front_matter(draw) -> bytes:
    lines = [b"---"]
    for number in range(draw(st.integers(1, 6))):
        lines.append(b"k%d: %s" % (number, draw(st.sampled_from(_YAML_VALUES))))
    if draw(st.booleans()):
        lines.append(b"l0: &l0 [x, x, x, x, x, x, x, x, x]")
        lines += [b"l%d: &l%d [%s]" % (i, i, b", ".join([b"*l%d" % (i - 1)] * 9)) for i in range(1, 9)]
    lines.append(b"---")
    return b"\n".join(lines) + b"\n# Page\n\nText.\n"


def inputs(seed: bytes, magic: bytes, *, package: bool = False, extra=()):
    """Damaged copies of the seed, arbitrary bytes, arbitrary bytes behind the format's magic, and `extra`."""
    strategies = [damaged_bytes(seed), st.binary(max_size=2048), st.binary(max_size=2048).map(lambda b: magic + b)]
    if package:
        strategies.append(damaged_member(seed))
    return st.one_of(*strategies, *extra)


# -- the property ----------------------------------------------------------------------------

_EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Exceeded)\b")


def assert_a_reason_for_a_person(error: IngestError) -> None:
    reason = str(error)
    assert reason[:1].isupper() and reason.endswith((".", ")")), reason
    assert "\n" not in reason and len(reason) < 400, reason
    assert not _EXCEPTION_NAME.search(reason) and "unexpected" not in reason.lower(), reason


class _Tracebacks(logging.Handler):
    """Log records that would print a traceback on the operator's terminal (INFO and up, kb's default)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def read_or_refuse(data: bytes, name: str) -> Extracted | None:
    """The reader's text, or None when it refused with a reason for a person; and no traceback logged."""
    tracebacks = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(tracebacks)
    try:
        extracted = readers.read_bytes(data, name=name, timeout=READ_TIMEOUT)
    except IngestError as error:
        assert_a_reason_for_a_person(error)
        extracted = None
    finally:
        root.removeHandler(tracebacks)
    assert not tracebacks.records, [f"{r.name}: {r.getMessage()}" for r in tracebacks.records]
    if extracted is not None:
        assert isinstance(extracted, Extracted) and isinstance(extracted.text, str)
        for section in extracted.sections:
            assert 0 <= section.start <= section.end <= len(extracted.text)
    return extracted


def read_archive_or_refuse(data: bytes) -> None:
    """An uploaded ZIP as kb takes it: a tree of pages unpacked one by one, anything else read as one file."""
    if not archives.is_page_archive(io.BytesIO(data)):
        read_or_refuse(data, "export.zip")  # a damaged archive becomes one document with the reason
        return
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            found = archives.pages(archive, archives.limits_from_settings())
        except IngestError as error:  # past the archive limits: refused whole
            assert_a_reason_for_a_person(error)
            return
        for _member_name, reason in found.refused:
            assert_a_reason_for_a_person(IngestError(reason))
        for member in found.members:
            page = io.BytesIO()
            try:
                archives.copy_member(archive, member.info, page)
            except IngestError as error:
                assert_a_reason_for_a_person(error)
                continue
            read_or_refuse(page.getvalue(), member.path)


def test_the_seeds_are_read():
    assert "nightly" in read_or_refuse(pdf_seed(), "ops.pdf").text
    assert "password manager" in read_or_refuse(docx_seed(), "policy.docx").text
    assert "Stop the service" in read_or_refuse(HTML, "restore.html").text
    assert read_or_refuse(MARKDOWN, "backups.md").title == "Backups"
    assert "Caf\u00e9" in read_or_refuse(TEXT, "notes.txt").text
    assert archives.is_page_archive(io.BytesIO(zip_seed()))


@FUZZ
@given(data=st.deferred(lambda: inputs(pdf_seed(), b"%PDF-1.7\n")))
def test_pdf_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "report.pdf")


@FUZZ
@given(data=st.deferred(lambda: inputs(docx_seed(), b"PK\x03\x04", package=True)))
def test_docx_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "policy.docx")


@FUZZ
@given(data=inputs(HTML, b"<!doctype html><html><body>", extra=[nested(b"<div>", b"</div>"), nested(b"<b><i>")]))
def test_html_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "restore.html")


@FUZZ
@given(data=inputs(MARKDOWN, b"---\ntitle: ", extra=[front_matter(), nested(b"> "), nested(b"- ")]))
def test_markdown_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "backups.md")


@FUZZ
@given(data=inputs(TEXT, b"\xef\xbb\xbf"))
def test_text_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "notes.txt")


@FUZZ
@given(data=st.deferred(lambda: inputs(zip_seed(), b"PK\x03\x04", package=True)))
def test_zip_of_pages_is_unpacked_or_refused_with_reasons(data):
    read_archive_or_refuse(data)
