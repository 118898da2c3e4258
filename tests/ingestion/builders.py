"""Small documents of every supported format, written by hand into a test's tmp_path."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with a real text layer: one page per string, one text line per line.

    Written by hand because pypdf cannot lay out text and reportlab would be a test-only
    dependency for twenty lines of PDF syntax.
    """
    count = len(pages)
    # objects: 1 catalog, 2 page tree, 3 font, then (page, content) for each page
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(pages):
        lines = [line for line in text.split("\n")]
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        for line in lines:
            ops.append(f"{_pdf_string(line)} Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252") if text else b""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def write_pdf(
    path: Path,
    pages: list[str],
    *,
    title: str | None = None,
    outline: list[tuple[str, int, int]] | None = None,  # (title, page index, depth)
    user_password: str | None = None,
    owner_password: str | None = None,
) -> Path:
    """pdf_bytes() run through pypdf's writer for metadata, bookmarks and encryption."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(pages))))
    if title:
        writer.add_metadata({"/Title": title})
    parents: list = []
    for name, page, depth in outline or []:
        parent = parents[depth - 1] if depth > 0 else None
        item = writer.add_outline_item(title=name, page_number=page, parent=parent)
        parents = parents[:depth] + [item]
    if user_password is not None or owner_password is not None:
        writer.encrypt(user_password=user_password or "", owner_password=owner_password, algorithm="AES-128")
    with path.open("wb") as f:
        writer.write(f)
    return path


def write_docx(path: Path, build) -> Path:
    """A .docx made by python-docx; `build(document)` adds the content."""
    import docx

    document = docx.Document()
    build(document)
    document.save(str(path))
    return path


def make_zip(files: dict[str, bytes | str], *, compression=zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data.encode() if isinstance(data, str) else data)
    buffer.seek(0)
    return buffer
