"""Each format yields the right title, text, headings and pages; bad input fails with a reason."""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from ingestion.errors import IngestError
from tests.ingestion.builders import pdf_bytes, write_docx, write_pdf

MARKDOWN = """---
title: Operations Handbook
owner: platform team
---
Read this first.

# Backups

Backups protect the data.

## Schedule

Run it nightly.

```
# a comment in code, not a heading
```

## Restore

- stop the service
- copy the snapshot back

# Monitoring
Alerts go to whoever is on call.
"""


def noise(seed: int, size: int, *, low: int = 0, high: int = 256) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(low, high) for _ in range(size))


def paths(parsed) -> list[str]:
    return [c.heading_path for c in parsed.chunks]


# -- Markdown -----------------------------------------------------------------------------------


def test_markdown_headings_become_heading_paths(parse):
    parsed = parse("handbook.md", MARKDOWN)

    assert paths(parsed) == ["", "Backups", "Backups > Schedule", "Backups > Restore", "Monitoring"]
    schedule = parsed.chunks[2]
    assert schedule.text.startswith("Run it nightly.")
    assert "# a comment in code, not a heading" in schedule.text
    assert all(c.page is None for c in parsed.chunks)


def test_markdown_front_matter_gives_title_and_leaves_the_text(parse):
    parsed = parse("handbook.md", MARKDOWN)

    assert parsed.title == "Operations Handbook"
    assert "owner:" not in parsed.text
    assert parsed.text.lstrip().startswith("Read this first.")


def test_markdown_title_falls_back_to_first_h1_then_file_stem(parse):
    assert parse("a.md", "Some intro.\n\n# Real Title\n\nBody.\n").title == "Real Title"
    assert parse("disaster-recovery.md", "## Only a subheading\n\nBody.\n").title == "disaster-recovery"


def test_markdown_section_with_only_a_heading_yields_no_chunk(parse):
    parsed = parse("a.md", "# Parent\n\n## Child\n\nBody text.\n")

    assert [(c.heading_path, c.text) for c in parsed.chunks] == [("Parent > Child", "Body text.")]


def test_markdown_setext_headings_and_inline_markup_in_headings(parse):
    parsed = parse("a.md", "Install `kb` **now**\n====================\n\nBody.\n")

    assert parsed.title == "Install kb now"
    assert paths(parsed) == ["Install kb now"]


# -- plain text ---------------------------------------------------------------------------------


def test_plain_text_is_one_untitled_section(parse):
    parsed = parse("release-notes.txt", "Version 2 adds search.\n\nVersion 1 was the first.\n")

    assert parsed.title == "release-notes"
    assert [(c.heading_path, c.page) for c in parsed.chunks] == [("", None)]
    assert "Version 1 was the first." in parsed.chunks[0].text


def test_text_with_byte_order_marks_is_decoded(parse):
    assert parse("a.txt", "\ufeffcafé au lait".encode()).chunks[0].text == "café au lait"
    assert parse("b.txt", "Grüße aus Köln".encode("utf-16")).chunks[0].text == "Grüße aus Köln"


def test_windows_1252_text_is_decoded(parse):
    parsed = parse("notes.txt", "Le café était déjà fermé — “dommage”.\r\n".encode("cp1252"))

    assert parsed.chunks[0].text == "Le café était déjà fermé — “dommage”."


# -- HTML ---------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>Backups | Example Corp intranet</title><style>.x { color: red }</style></head>
<body>
  <header><a href="/">Example Corp</a> site banner</header>
  <nav><a href="/a">Navigation link</a></nav>
  <main>
    <h1>Backup guide</h1>
    <p>Every   server is
       backed up.</p>
    <h2>Schedule</h2>
    <p>Run it nightly.<br>Keep thirty days.</p>
    <ul><li>first item</li><li>second item</li></ul>
    <aside>Related: sidebar teaser</aside>
    <script>console.log("tracking code")</script>
    <h3>Exceptions</h3>
    <table><tr><th>Host</th><th>When</th></tr><tr><td>db1</td><td>hourly</td></tr></table>
  </main>
  <footer>Copyright footer text</footer>
</body></html>
"""


def test_html_keeps_main_content_and_heading_structure(parse):
    parsed = parse("guide.html", PAGE)

    assert parsed.title == "Backup guide"
    assert paths(parsed) == ["Backup guide", "Backup guide > Schedule", "Backup guide > Schedule > Exceptions"]
    assert parsed.chunks[0].text == "Every server is backed up."
    assert parsed.chunks[1].text == "Run it nightly.\nKeep thirty days.\n\n- first item\n\n- second item"
    assert parsed.chunks[2].text == "Host | When\n\ndb1 | hourly"
    for noise in ("site banner", "Navigation link", "sidebar teaser", "tracking code", "Copyright", "color: red"):
        assert noise not in parsed.text


def test_html_headings_lose_the_permalink_marks_of_doc_generators(parse):
    page = (
        '<html><body><main><h1>Data model<a class="headerlink" href="#data-model" title="Permalink">¶</a></h1>'
        "<p>Objects are Python's abstraction for data.</p>"
        '<h2 id="types">Types<a class="header-anchor" href="#types">#</a></h2><p>Every object has a type.</p>'
        "</main></body></html>"
    )
    parsed = parse("datamodel.html", page)

    assert parsed.title == "Data model"
    assert paths(parsed) == ["Data model", "Data model > Types"]
    assert "¶" not in parsed.text


def test_html_without_main_drops_page_chrome_and_uses_title_tag(parse):
    page = (
        "<html><head><title>Holiday policy</title></head><body><header>Site header</header>"
        "<div><p>Take your leave.</p></div><footer>Site footer</footer></body></html>"
    )
    parsed = parse("policy.htm", page)

    assert parsed.title == "Holiday policy"
    assert [c.text for c in parsed.chunks] == ["Take your leave."]


def test_html_is_recognised_by_content_whatever_the_name(parse):
    parsed = parse("export.txt", "<!doctype html><html><body><h1>Export</h1><p>Body.</p></body></html>")

    assert paths(parsed) == ["Export"]
    assert parsed.chunks[0].text == "Body."


# -- PDF ----------------------------------------------------------------------------------------


def test_pdf_chunks_keep_their_page_and_title_from_metadata(parse, tmp_path):
    path = write_pdf(
        tmp_path / "manual.pdf",
        ["Installing the agent.\nIt needs root.", "", "Upgrading is automatic."],
        title="Agent Manual",
    )
    parsed = parse("manual.pdf", path)

    assert parsed.title == "Agent Manual"
    assert [c.page for c in parsed.chunks] == [1, 3]
    assert "It needs root." in parsed.chunks[0].text
    assert "Upgrading is automatic." in parsed.chunks[1].text


def test_pdf_bookmarks_give_heading_paths(parse, tmp_path):
    path = write_pdf(
        tmp_path / "guide.pdf",
        ["Preface text.", "Install on Linux.", "Install on Windows.", "Uninstalling."],
        outline=[("Installation", 1, 0), ("Windows", 2, 1), ("Removal", 3, 0)],
    )
    parsed = parse("guide.pdf", path)

    assert paths(parsed) == ["", "Installation", "Installation > Windows", "Removal"]


def test_pdf_title_falls_back_to_the_file_stem(parse, tmp_path):
    (tmp_path / "q3-report.pdf").write_bytes(pdf_bytes(["Revenue grew."]))

    assert parse("q3-report.pdf", tmp_path / "q3-report.pdf").title == "q3-report"


def test_pdf_with_only_an_owner_password_is_read(parse, tmp_path):
    path = write_pdf(tmp_path / "locked.pdf", ["Printing is restricted."], owner_password="owner-secret")

    assert parse("locked.pdf", path).chunks[0].text == "Printing is restricted."


def test_pdf_is_recognised_by_content_whatever_the_name(parse):
    parsed = parse("scan-export.txt", pdf_bytes(["Found by its header."]))

    assert parsed.chunks[0].page == 1


# -- DOCX ---------------------------------------------------------------------------------------


def _policy(document) -> None:
    document.add_heading("Security Policy", level=0)  # the Title style
    document.add_paragraph("Applies to all staff.")
    document.add_heading("Passwords", level=1)
    document.add_paragraph("Use a password manager.")
    document.add_paragraph("Twelve characters at least", style="List Bullet")
    document.add_paragraph("No reuse across sites", style="List Bullet")
    document.add_heading("Rotation", level=2)
    document.add_paragraph("Rotate service keys yearly.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Key", "Period"
    table.cell(1, 0).text, table.cell(1, 1).text = "TLS", "1 year"
    document.add_heading("Devices", level=1)
    document.add_paragraph("Encrypt every laptop.")


def test_docx_heading_styles_become_heading_paths(parse, tmp_path):
    parsed = parse("policy.docx", write_docx(tmp_path / "policy.docx", _policy))

    assert parsed.title == "Security Policy"
    assert paths(parsed) == ["", "Passwords", "Passwords > Rotation", "Devices"]
    assert parsed.chunks[1].text == ("Use a password manager.\n\n- Twelve characters at least\n- No reuse across sites")
    assert parsed.chunks[2].text == "Rotate service keys yearly.\n\nKey | Period\nTLS | 1 year"


def test_docx_title_from_document_properties_then_first_heading(parse, tmp_path):
    def with_property(document):
        document.core_properties.title = "From Properties"
        document.add_heading("Chapter", level=1)
        document.add_paragraph("Text.")

    def with_heading(document):
        document.add_heading("Chapter One", level=1)
        document.add_paragraph("Text.")

    assert parse("a.docx", write_docx(tmp_path / "a.docx", with_property)).title == "From Properties"
    assert parse("b.docx", write_docx(tmp_path / "b.docx", with_heading)).title == "Chapter One"


# -- bad input ----------------------------------------------------------------------------------


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "The file is empty."),
        ("blank.md", b"  \n\t\n", "The file is empty."),
        ("garbage.txt", noise(7, 4096), "looks like binary data"),
        ("controls.txt", noise(8, 4096, low=1, high=32), "looks like binary data"),
        ("report.pdf", b"Just some text, saved with the wrong name.\n", "named .pdf but is not a PDF"),
        ("letter.docx", b"Plain text pretending to be Word.\n", "named .docx but is not a Word document"),
        ("latin.txt", "caf\u00e9".encode("cp1252") + b" \x81\x8d\x90 more", "not UTF-8 text"),
        ("cyrillic.txt", "Привет, как дела? Это тест кодировки.".encode("koi8-r"), "not UTF-8 text"),
        ("photo.md", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "a PNG image"),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "old-style Office file"),
        ("bundle.zip", _zip({"readme.txt": b"hello"}), "ZIP archive, not a document"),
        ("sheet.xlsx", _zip({"xl/workbook.xml": b"<workbook/>"}), "Excel and PowerPoint"),
        ("broken.docx", _zip({"word/document.xml": b"<not xml"}), "Word document is damaged"),
        ("broken.pdf", b"%PDF-1.4\n" + noise(9, 2048), "damaged"),
    ],
)
def test_bad_input_fails_with_a_reason(parse, name, content, reason):
    with pytest.raises(IngestError) as caught:
        parse(name, content)

    assert reason in str(caught.value)


def test_pdf_with_a_user_password_fails_as_encrypted(parse, tmp_path):
    path = write_pdf(tmp_path / "secret.pdf", ["Hidden."], user_password="open-sesame", owner_password="o")

    with pytest.raises(IngestError, match="encrypted"):
        parse("secret.pdf", path)


def test_pdf_without_a_text_layer_fails_asking_for_ocr(parse):
    with pytest.raises(IngestError, match="no text layer.*OCR"):
        parse("scan.pdf", pdf_bytes(["", ""]))
