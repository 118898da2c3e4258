"""Every reader, fed arbitrary bytes or a damaged copy of a real file, returns text or says why not.

Property: reading either returns an Extracted or raises IngestError whose text is a sentence
for a person (no exception names, no "unexpected"); never any other exception. The seeds are
small real files made here (a PDF written by pypdf, a .docx by python-docx, HTML, Markdown,
plain text, a ZIP of pages); the damage is bit flips, truncation, inserted or overwritten
junk and deleted runs, on the file's bytes or inside one member of a ZIP package (so the XML
parsers behind the ZIP's checksums are reached too). Seeds and damage live in fuzz_seeds,
shared with bench/fuzz_readers.py, which runs the long version. Derandomized, no example
database: CI sees the same inputs every run.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion import archives, readers
from ingestion.errors import IngestError
from ingestion.readers import Extracted
from tests.ingestion import fuzz_seeds
from tests.ingestion.fuzz_seeds import (
    HTML,
    MAGIC,
    MARKDOWN,
    TEXT,
    damage_bytes,
    damage_member,
    docx_seed,
    pdf_seed,
    zip_seed,
)

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
READ_TIMEOUT = 20.0  # seconds; far above any of these small files, so a hang shows as a reason here


# -- damage, drawn by hypothesis ----------------------------------------------------------------


class _Drawn:
    """fuzz_seeds' Chooser over hypothesis's draw, so the damage is shrunk and replayed as hypothesis does."""

    def __init__(self, draw) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def junk(self, low: int, high: int) -> bytes:
        return self.draw(st.binary(min_size=low, max_size=high))

    def coin(self) -> bool:
        return self.draw(st.booleans())


@st.composite
def damaged_bytes(draw, seed: bytes) -> bytes:
    return damage_bytes(_Drawn(draw), seed)[0]


@st.composite
def damaged_member(draw, package: bytes) -> bytes:
    return damage_member(_Drawn(draw), package)[0]


@st.composite
def front_matter(draw) -> bytes:
    return fuzz_seeds.front_matter(_Drawn(draw))[0]


def nested(open_tag: bytes, close_tag: bytes = b"", *, most: int = 3000):
    """Markup nested n deep: what machine-made or hostile files do to recursive parsers."""
    return st.integers(1, most).map(lambda n: open_tag * n + b"deep" + close_tag * n)


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
@given(data=st.deferred(lambda: inputs(pdf_seed(), MAGIC["pdf"])))
def test_pdf_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "report.pdf")


@FUZZ
@given(data=st.deferred(lambda: inputs(docx_seed(), MAGIC["docx"], package=True)))
def test_docx_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "policy.docx")


@FUZZ
@given(data=inputs(HTML, MAGIC["html"], extra=[nested(b"<div>", b"</div>"), nested(b"<b><i>")]))
def test_html_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "restore.html")


@FUZZ
@given(data=inputs(MARKDOWN, MAGIC["markdown"], extra=[front_matter(), nested(b"> "), nested(b"- ")]))
def test_markdown_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "backups.md")


@FUZZ
@given(data=inputs(TEXT, MAGIC["text"]))
def test_text_reader_returns_text_or_a_reason(data):
    read_or_refuse(data, "notes.txt")


@FUZZ
@given(data=st.deferred(lambda: inputs(zip_seed(), MAGIC["zip"], package=True)))
def test_zip_of_pages_is_unpacked_or_refused_with_reasons(data):
    read_archive_or_refuse(data)
