"""The folder connector: a server directory inside KB_SOURCE_ROOTS, walked with content hashes."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingestion.connectors import folder as folder_module
from ingestion.connectors import open_connector
from ingestion.connectors.base import Limits, Page, SourceConfig, SourceError
from ingestion.connectors.folder import FolderConnector


def make(location: Path | str, roots: tuple[Path, ...], **kwargs) -> FolderConnector:
    limits = kwargs.pop("limits", Limits(roots=roots))
    return FolderConnector(SourceConfig(kind="folder", location=str(location), limits=limits, **kwargs))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "guide" / "deep").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n")
    (docs / "guide" / "setup.html").write_text("<h1>Setup</h1>")
    (docs / "guide" / "deep" / "notes.txt").write_text("notes")
    (docs / "guide" / "Report.PDF").write_bytes(b"%PDF-1.4 not really")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a document kb reads
    (docs / "script.py").write_text("print()")
    (docs / ".hidden.md").write_text("hidden")
    (docs / ".git").mkdir()
    (docs / ".git" / "README.md").write_text("inside a hidden folder")
    return docs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_lists_documents_with_content_hashes(tree: Path, tmp_path: Path):
    connector = make(tree, (tmp_path,))
    listing = connector.list_pages(known={}, cursor={})

    assert [page.path for page in listing.pages] == [
        "guide/Report.PDF",
        "guide/deep/notes.txt",
        "guide/setup.html",
        "index.md",
    ]
    assert listing.complete and listing.failures == []
    index = listing.pages[-1]
    assert index.ref == sha(b"# Home\n")
    assert index.title == "" and index.url == ""
    mtime = (tree / "index.md").stat().st_mtime
    assert index.modified == datetime.fromtimestamp(mtime, tz=UTC)
    assert index.modified.tzinfo is not None
    assert connector.fetch(index) == b"# Home\n"
    assert isinstance(
        open_connector(SourceConfig(kind="folder", location=str(tree), limits=Limits(roots=(tmp_path,)))),
        FolderConnector,
    )


def test_include_and_exclude(tree: Path, tmp_path: Path):
    listing = make(tree, (tmp_path,), include=("guide/*",), exclude=("*.txt",)).list_pages(known={}, cursor={})
    assert [page.path for page in listing.pages] == ["guide/Report.PDF", "guide/setup.html"]


def test_unchanged_files_are_not_hashed_again(tree: Path, tmp_path: Path, monkeypatch):
    hashed: list[str] = []
    real_hash = folder_module._sha256

    def counting(path: str, limit: int) -> str:
        hashed.append(Path(path).name)
        return real_hash(path, limit)

    monkeypatch.setattr(folder_module, "_sha256", counting)
    connector = make(tree, (tmp_path,))
    first = connector.list_pages(known={}, cursor={})
    assert len(hashed) == 4

    hashed.clear()
    second = connector.list_pages(known={}, cursor=first.cursor)
    assert hashed == []
    assert [(page.path, page.ref) for page in second.pages] == [(page.path, page.ref) for page in first.pages]

    (tree / "index.md").write_text("# Home, longer now\n")
    third = connector.list_pages(known={}, cursor=second.cursor)
    assert hashed == ["index.md"]
    refs = {page.path: page.ref for page in third.pages}
    assert refs["index.md"] == sha(b"# Home, longer now\n")
    assert refs["guide/setup.html"] == sha(b"<h1>Setup</h1>")


def test_same_size_and_mtime_but_new_content_is_noticed(tree: Path, tmp_path: Path):
    # A copy that keeps size and mtime (rsync -t, cp -p) still changes the inode's ctime.
    connector = make(tree, (tmp_path,))
    first = connector.list_pages(known={}, cursor={})
    target = tree / "index.md"
    before = target.stat()
    time.sleep(0.05)  # past a coarse ctime clock's tick, so the rewrite's ctime differs
    target.write_text("# Hume\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_ctime_ns != before.st_ctime_ns  # the case under test: only ctime moved
    assert target.stat().st_mtime_ns == before.st_mtime_ns and target.stat().st_size == before.st_size
    second = connector.list_pages(known={}, cursor=first.cursor)
    assert {page.path: page.ref for page in second.pages}["index.md"] == sha(b"# Hume\n")


def test_symlinks_are_never_followed_out_of_the_folder(tree: Path, tmp_path: Path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwords.md").write_text("hunter2")
    (outside / "more.md").write_text("more")
    (tree / "leak.md").symlink_to(outside / "passwords.md")
    (tree / "linked-dir").symlink_to(outside, target_is_directory=True)
    (tree / "inner-dir").symlink_to(tree / "guide", target_is_directory=True)
    (tree / "alias.md").symlink_to(tree / "index.md")  # inside the folder: fine
    (tree / "dangling.md").symlink_to(tmp_path / "nowhere.md")

    listing = make(tree, (tmp_path,)).list_pages(known={}, cursor={})
    paths = [page.path for page in listing.pages]
    assert "leak.md" not in paths
    assert not any(path.startswith(("linked-dir/", "inner-dir/")) for path in paths)
    assert "alias.md" in paths and "dangling.md" not in paths
    assert ("leak.md", "Skipped: it links outside the folder.") in listing.failures
    assert listing.complete

    # A link swapped in after the listing is refused when read.
    (tree / "index.md").unlink()
    (tree / "index.md").symlink_to(outside / "passwords.md")
    with pytest.raises(SourceError, match="outside the folder"):
        make(tree, (tmp_path,)).fetch(Page(path="index.md", ref="x"))
    with pytest.raises(SourceError, match="outside the folder"):
        make(tree, (tmp_path,)).fetch(Page(path="../secret/passwords.md", ref="x"))


def test_location_outside_the_roots_is_refused(tree: Path, tmp_path: Path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(SourceError, match="outside the folders kb may read"):
        make(tree, (allowed,))
    with pytest.raises(SourceError, match="outside the folders kb may read"):
        make(f"{allowed}/../docs", (allowed,))
    # A link inside the roots to a folder outside them is judged by where it leads.
    (allowed / "docs-link").symlink_to(tree, target_is_directory=True)
    with pytest.raises(SourceError, match="outside the folders kb may read"):
        make(allowed / "docs-link", (allowed,))
    # A sibling whose name starts like the root is not inside it.
    (tmp_path / "allowed-not").mkdir()
    with pytest.raises(SourceError, match="outside"):
        make(tmp_path / "allowed-not", (allowed,))
    with pytest.raises(SourceError, match="KB_SOURCE_ROOTS"):
        make(tree, ())
    with pytest.raises(SourceError, match="absolute path"):
        make("docs", (tmp_path,))
    assert make(tree, (tmp_path,)).root == os.path.realpath(tree)


def test_missing_location(tmp_path: Path):
    connector = make(tmp_path / "gone", (tmp_path,))
    with pytest.raises(SourceError, match="does not exist"):
        connector.list_pages(known={}, cursor={})
    (tmp_path / "file.md").write_text("x")
    with pytest.raises(SourceError, match="not a folder"):
        make(tmp_path / "file.md", (tmp_path,)).list_pages(known={}, cursor={})


def test_unreadable_file_is_a_failure_not_a_crash(tree: Path, tmp_path: Path, monkeypatch):
    real_hash = folder_module._sha256

    def denied(path: str, limit: int) -> str:
        if path.endswith("notes.txt"):
            raise PermissionError(13, "Permission denied", path)
        return real_hash(path, limit)

    monkeypatch.setattr(folder_module, "_sha256", denied)
    listing = make(tree, (tmp_path,)).list_pages(known={}, cursor={})
    assert "guide/deep/notes.txt" not in [page.path for page in listing.pages]
    assert listing.failures == [("guide/deep/notes.txt", "kb may not read this file (permission denied).")]
    # A failed path is not a vanished one (kb keeps its document): the rest of the listing is whole.
    assert listing.complete is True


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_for_real(tree: Path, tmp_path: Path):
    (tree / "index.md").chmod(0)
    (tree / "guide" / "deep").chmod(0)
    try:
        connector = make(tree, (tmp_path,))
        listing = connector.list_pages(known={}, cursor={})
        paths = [page.path for page in listing.pages]
        assert "index.md" not in paths and "guide/setup.html" in paths
        assert {path for path, _ in listing.failures} == {"index.md", "guide/deep"}
        assert listing.complete is False  # the unreadable folder may hide pages kb still has
        with pytest.raises(SourceError, match="permission denied"):
            connector.fetch(Page(path="index.md", ref="x"))
    finally:
        (tree / "index.md").chmod(0o644)
        (tree / "guide" / "deep").chmod(0o755)


def test_page_budget_lists_the_first_pages_and_is_incomplete(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(5):
        (docs / f"page-{number}.md").write_text(f"page {number}")
    listing = make(docs, (tmp_path,), limits=Limits(roots=(tmp_path,), max_pages=3)).list_pages(known={}, cursor={})
    assert [page.path for page in listing.pages] == ["page-0.md", "page-1.md", "page-2.md"]
    assert listing.complete is False


def test_size_limit(tmp_path: Path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "big.md").write_bytes(b"x" * 100)
    (docs / "small.md").write_bytes(b"x" * 10)
    hashed: list[str] = []
    real_hash = folder_module._sha256
    monkeypatch.setattr(folder_module, "_sha256", lambda path, limit: hashed.append(path) or real_hash(path, limit))
    connector = make(docs, (tmp_path,), limits=Limits(roots=(tmp_path,), max_bytes=50))
    listing = connector.list_pages(known={}, cursor={})
    big, small = listing.pages
    # Listed (kb reports it as too large) but never read to be hashed.
    assert big.ref.startswith("too-large:") and hashed == [str(docs / "small.md")]
    with pytest.raises(SourceError, match="big.md is 100 bytes; the limit is 50 bytes"):
        connector.fetch(big)
    assert connector.fetch(small) == b"x" * 10


def test_fetch_of_a_vanished_file(tree: Path, tmp_path: Path):
    connector = make(tree, (tmp_path,))
    page = next(page for page in connector.list_pages(known={}, cursor={}).pages if page.path == "index.md")
    (tree / "index.md").unlink()
    with pytest.raises(SourceError, match="no longer in the folder"):
        connector.fetch(page)


def test_special_files_are_skipped(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    os.mkfifo(docs / "pipe.md")  # reading a FIFO would block the worker forever
    (docs / "real.md").write_text("x")
    listing = make(docs, (tmp_path,)).list_pages(known={}, cursor={})
    assert [page.path for page in listing.pages] == ["real.md"]
