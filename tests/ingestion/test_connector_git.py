"""The git connector, against repositories made in tmp_path (local paths) and a loopback HTTP stand-in."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ingestion.connectors import git as git_module
from ingestion.connectors import open_connector
from ingestion.connectors.base import Limits, Page, SourceConfig, SourceError
from ingestion.connectors.git import GitConnector

TOKEN = "glpat-SECRET-token-1234"


def git(repo: Path, *args: str, date: str = "2024-01-01T12:00:00+00:00") -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=repo, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def write(repo: Path, path: str, content: str | bytes) -> None:
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        target.write_text(content)
    else:
        target.write_bytes(content)


def commit(repo: Path, message: str, date: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, date=date)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "wiki"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, "README.md", "# Wiki\n")
    write(repo, "guide/setup.md", "# Setup\n")
    write(repo, "guide/old.md", "# Old\n")
    commit(repo, "first", "2024-01-01T12:00:00+00:00")
    write(repo, "guide/setup.md", "# Setup\n\nMore.\n")
    write(repo, "guide/page two.html", "<h1>Two</h1>")
    write(repo, "logo.png", b"\x89PNG\r\n\x1a\n")  # not a document
    write(repo, "tool.py", "print()")
    write(repo, ".github/issue.md", "hidden")
    os.symlink("README.md", repo / "link.md")  # a link's blob is a path: never a page
    commit(repo, "second", "2024-02-01T08:30:00+02:00")
    return repo


def make(repo: Path | str, roots: tuple[Path, ...], **kwargs) -> GitConnector:
    limits = kwargs.pop("limits", Limits(roots=roots))
    options = kwargs.pop("options", {})
    return GitConnector(SourceConfig(kind="git", location=str(repo), limits=limits, options=options, **kwargs))


def blob(repo: Path, rev: str, path: str) -> str:
    return git(repo, "rev-parse", f"{rev}:{path}")


def test_first_listing(repo: Path, tmp_path: Path):
    template = "https://git.corp/team/wiki/blob/{commit}/{path}?ref={branch}"
    connector = make(repo, (tmp_path,), options={"cache_dir": str(tmp_path / "cache.git"), "web_url": template})
    listing = connector.list_pages(known={}, cursor={})
    head = git(repo, "rev-parse", "HEAD")

    assert [page.path for page in listing.pages] == [
        "README.md",
        "guide/old.md",
        "guide/page two.html",
        "guide/setup.md",
    ]
    assert listing.complete and listing.failures == []
    pages = {page.path: page for page in listing.pages}
    for path, page in pages.items():
        assert page.ref == blob(repo, "HEAD", path)
        assert page.title == ""
    assert pages["README.md"].modified == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert pages["guide/setup.md"].modified == datetime(2024, 2, 1, 6, 30, tzinfo=UTC)
    assert pages["guide/page two.html"].url == f"https://git.corp/team/wiki/blob/{head}/guide/page%20two.html?ref=main"
    assert listing.cursor["commit"] == head and listing.cursor["branch"] == "main"
    assert connector.fetch(pages["guide/setup.md"]) == b"# Setup\n\nMore.\n"
    assert isinstance(
        open_connector(SourceConfig(kind="git", location=str(repo), limits=Limits(roots=(tmp_path,)))), GitConnector
    )


def test_later_syncs_see_changes_deletions_and_renames(repo: Path, tmp_path: Path):
    cache = str(tmp_path / "cache.git")
    first = make(repo, (tmp_path,), options={"cache_dir": cache}).list_pages(known={}, cursor={})
    before = {page.path: page for page in first.pages}

    write(repo, "README.md", "# Wiki, edited\n")
    git(repo, "rm", "-q", "guide/old.md")
    git(repo, "mv", "guide/page two.html", "guide/two.html")
    commit(repo, "third", "2024-03-01T00:00:00+00:00")

    # A new connector, as each sync makes one: the cache and the cursor carry over.
    connector = make(repo, (tmp_path,), options={"cache_dir": cache})
    known = {page.path: page.ref for page in first.pages}
    second = connector.list_pages(known=known, cursor=first.cursor)
    after = {page.path: page for page in second.pages}

    assert sorted(after) == ["README.md", "guide/setup.md", "guide/two.html"]
    changed = [path for path, page in after.items() if known.get(path) != page.ref]
    assert sorted(changed) == ["README.md", "guide/two.html"]
    # Unchanged and renamed files keep their blob id; the renamed one is new only by its path.
    assert after["guide/setup.md"].ref == before["guide/setup.md"].ref
    assert after["guide/two.html"].ref == before["guide/page two.html"].ref
    assert after["README.md"].modified == datetime(2024, 3, 1, tzinfo=UTC)
    assert after["guide/two.html"].modified == datetime(2024, 3, 1, tzinfo=UTC)
    assert after["guide/setup.md"].modified == datetime(2024, 2, 1, 6, 30, tzinfo=UTC)
    assert connector.fetch(after["README.md"]) == b"# Wiki, edited\n"
    assert second.cursor["commit"] == git(repo, "rev-parse", "HEAD")


def test_only_changed_pages_are_read(repo: Path, tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording(argv, *args, **kwargs):
        calls.append(list(argv))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording)
    connector = make(repo, (tmp_path,), options={"cache_dir": str(tmp_path / "cache.git")})
    listing = connector.list_pages(known={}, cursor={})
    # Listing reads trees and history, never a blob.
    assert not any("cat-file" in argv for argv in calls)

    calls.clear()
    page = listing.pages[0]
    assert connector.fetch(page) == (repo / page.path).read_bytes()
    assert [argv[argv.index("cat-file") :] for argv in calls] == [
        ["cat-file", "-s", page.ref],
        ["cat-file", "blob", page.ref],
    ]

    # Nothing changed: the dates come from the cursor, history is not walked again.
    calls.clear()
    again = connector.list_pages(known={p.path: p.ref for p in listing.pages}, cursor=listing.cursor)
    assert not any("log" in argv for argv in calls)
    assert [(p.path, p.ref, p.modified) for p in again.pages] == [(p.path, p.ref, p.modified) for p in listing.pages]


def test_another_branch_and_the_default_branch(repo: Path, tmp_path: Path):
    git(repo, "checkout", "-q", "-b", "release")
    write(repo, "release-notes.md", "# 1.0\n")
    commit(repo, "release", "2024-04-01T00:00:00+00:00")
    git(repo, "checkout", "-q", "main")

    release = make(repo, (tmp_path,), branch="release").list_pages(known={}, cursor={})
    assert "release-notes.md" in [page.path for page in release.pages]
    assert release.cursor["branch"] == "release"
    default = make(repo, (tmp_path,)).list_pages(known={}, cursor={})
    assert "release-notes.md" not in [page.path for page in default.pages]
    assert default.cursor["branch"] == "main"

    # The remote's HEAD decides the default, whatever it is called.
    git(repo, "checkout", "-q", "release")
    assert make(repo, (tmp_path,)).list_pages(known={}, cursor={}).cursor["branch"] == "release"

    with pytest.raises(SourceError, match="The branch 'nope' does not exist"):
        make(repo, (tmp_path,), branch="nope").list_pages(known={}, cursor={})
    for bad in ("--upload-pack=touch /tmp/x", "a..b", "a b", "x:y"):
        with pytest.raises(SourceError, match="not a valid branch name"):
            make(repo, (tmp_path,), branch=bad)


def test_history_rewritten_upstream(repo: Path, tmp_path: Path):
    cache = str(tmp_path / "cache.git")
    first = make(repo, (tmp_path,), options={"cache_dir": cache}).list_pages(known={}, cursor={})
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    write(repo, "README.md", "# Rewritten\n")
    commit(repo, "rewritten", "2024-05-01T00:00:00+00:00")
    connector = make(repo, (tmp_path,), options={"cache_dir": cache})
    second = connector.list_pages(known={}, cursor=first.cursor)
    assert [page.path for page in second.pages] == ["README.md", "guide/old.md", "guide/setup.md"]
    assert connector.fetch(second.pages[0]) == b"# Rewritten\n"


def test_include_exclude_and_page_budget(repo: Path, tmp_path: Path):
    listing = make(repo, (tmp_path,), include=("guide/*",), exclude=("*.html",)).list_pages(known={}, cursor={})
    assert [page.path for page in listing.pages] == ["guide/old.md", "guide/setup.md"]
    budget = Limits(roots=(tmp_path,), max_pages=2)
    listing = make(repo, (tmp_path,), limits=budget).list_pages(known={}, cursor={})
    assert [page.path for page in listing.pages] == ["README.md", "guide/old.md"]
    assert listing.complete is False


def test_fetch_limits(repo: Path, tmp_path: Path):
    connector = make(repo, (tmp_path,), limits=Limits(roots=(tmp_path,), max_bytes=8))
    pages = {page.path: page for page in connector.list_pages(known={}, cursor={}).pages}
    assert connector.fetch(pages["README.md"]) == b"# Wiki\n"
    with pytest.raises(SourceError, match="guide/setup.md is 15 bytes; the limit is 8 bytes"):
        connector.fetch(pages["guide/setup.md"])
    with pytest.raises(SourceError, match="not in kb's copy"):
        connector.fetch(Page(path="gone.md", ref="0" * 40))
    with pytest.raises(SourceError, match="not a Git object id"):
        connector.fetch(Page(path="x.md", ref="HEAD:README.md"))
    connector.close()


def test_local_locations_must_be_inside_the_roots(repo: Path, tmp_path: Path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(SourceError, match="outside the folders kb may read"):
        make(repo, (allowed,))
    with pytest.raises(SourceError, match="KB_SOURCE_ROOTS"):
        make(repo, ())
    # A work tree inside the roots whose git data lives elsewhere.
    worktree = allowed / "checkout"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    with pytest.raises(SourceError, match="Git data lies outside"):
        make(worktree, (allowed,))
    # Inside the roots but no repository.
    with pytest.raises(SourceError, match="no Git repository"):
        make(allowed, (allowed,)).list_pages(known={}, cursor={})


def test_empty_repository(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(SourceError, match="empty"):
        make(empty, (tmp_path,)).list_pages(known={}, cursor={})


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///srv/repo.git", "file:// addresses are not accepted"),
        ("FILE:/srv/repo.git", "file:// addresses are not accepted"),
        ("ext::sh -c touch% /tmp/pwned", "ext:: transports"),
        ("fd::3", "fd:: transports"),
        ("git://example.org/repo.git", "not git://"),
        ("ftp://example.org/repo.git", "not ftp://"),
        ("-oProxyCommand=touch /tmp/pwned:repo", "spaces"),
        ("-oProxyCommand=x:repo", "neither a repository URL"),
        ("ssh://-oProxyCommand=x/repo", "no valid host"),
        ("ssh://-oProxyCommand=x@host/repo", "no valid host"),
        ("-oProxyCommand=x@host:repo", "neither a repository URL"),
        ("relative/path", "neither a repository URL"),
        ("https://user:pw@git.example.org/repo.git", "not in the address"),
        ("", "empty"),
    ],
)
def test_refused_locations(location: str, reason: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_git)
    with pytest.raises(SourceError, match=reason):
        make(location, (tmp_path,))


def _no_git(*args, **kwargs):
    raise AssertionError("git must not run for a refused location")


@pytest.mark.parametrize(
    "location",
    [
        "https://10.0.0.1/team/wiki.git",
        "http://127.0.0.1:8080/wiki.git",
        "https://[::1]/wiki.git",
        "https://169.254.169.254/latest",
        "ssh://git@192.168.1.10/team/wiki.git",
        "git@10.1.2.3:team/wiki.git",
    ],
)
def test_private_remotes_are_refused_before_any_connection(location: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_git)
    with pytest.raises(SourceError, match="Refused") as refused:
        make(location, (tmp_path,))
    assert location in str(refused.value)
    # The administrator may open an intranet host.
    host = location.split("@")[-1].split("//")[-1].split("/")[0].split(":")[0] if "[" not in location else "::1"
    make(location, (tmp_path,), limits=Limits(roots=(tmp_path,), allowed_hosts=frozenset({host})))


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def loopback_git():
    """A loopback HTTP server that refuses every request with 401 and records the Authorization header."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_credentials_travel_in_the_environment_never_in_argv_nor_messages(loopback_git, tmp_path: Path, monkeypatch):
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording(argv, *args, **kwargs):
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording)
    limits = Limits(roots=(tmp_path,), allowed_hosts=frozenset({"127.0.0.1"}), timeout=5)
    connector = make(
        f"http://127.0.0.1:{loopback_git}/team/wiki.git", (tmp_path,), limits=limits,
        credentials={"username": "alice", "token": TOKEN}, branch="main",
    )  # fmt: skip
    assert TOKEN not in repr(connector.config)
    with pytest.raises(SourceError) as failed:
        connector.list_pages(known={}, cursor={})
    message = str(failed.value)
    assert "refused the credentials" in message
    basic = base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    assert TOKEN not in message and basic not in message
    # The server got the token (so it was really sent), in a header.
    assert _Recorder.seen and _Recorder.seen[0]["authorization"] == f"Basic {basic}"
    assert calls
    for argv, env in calls:
        assert not any(TOKEN in arg or basic in arg for arg in argv)
        assert "protocol.allow=never" in argv and "http.followRedirects=false" in argv
        assert "protocol.http.allow=always" in argv and "protocol.file.allow=always" not in argv
        assert env["GIT_TERMINAL_PROMPT"] == "0"
    connector.close()


def test_no_credentials_needed_message(loopback_git, tmp_path: Path):
    limits = Limits(roots=(tmp_path,), allowed_hosts=frozenset({"127.0.0.1"}), timeout=5)
    connector = make(f"http://127.0.0.1:{loopback_git}/wiki.git", (tmp_path,), limits=limits, branch="main")
    with pytest.raises(SourceError, match="needs credentials"):
        connector.list_pages(known={}, cursor={})
    assert _Recorder.seen[0]["authorization"] == ""


def test_host_names_are_pinned_to_the_checked_addresses(loopback_git, tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(
        subprocess, "Popen", lambda argv, *a, **k: calls.append(list(argv)) or real_popen(argv, *a, **k)
    )
    limits = Limits(roots=(tmp_path,), allowed_hosts=frozenset({"localhost"}), timeout=5)
    connector = make(f"http://localhost:{loopback_git}/wiki.git", (tmp_path,), limits=limits, branch="main")
    with pytest.raises(SourceError):
        connector.list_pages(known={}, cursor={})
    pins = {arg for argv in calls for arg in argv if arg.startswith("http.curloptResolve=")}
    assert len(pins) == 1 and pins.pop().startswith(f"http.curloptResolve=localhost:{loopback_git}:")
    assert _Recorder.seen  # and git still reached the (pinned) server


def test_tokens_are_only_sent_over_http(repo: Path, tmp_path: Path):
    with pytest.raises(SourceError, match="only be sent over https or http"):
        make(repo, (tmp_path,), credentials={"token": TOKEN})


def test_messages_are_scrubbed(tmp_path: Path, repo: Path):
    connector = make(repo, (tmp_path,), credentials={})
    connector._secrets = [TOKEN]
    failed = git_module._GitFailed(
        f"fatal: unable to access 'https://alice:{TOKEN}@git.corp/x.git/': boom\nAuthorization: Bearer {TOKEN}\n"
    )
    detail = connector._detail(failed)
    assert TOKEN not in detail and "alice" not in detail
    assert detail == "unable to access 'https://***@git.corp/x.git/': boom"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another user")
def test_a_repository_of_another_user_is_git_s_to_refuse(repo: Path, tmp_path: Path):
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    with pytest.raises(SourceError, match=f"safe.directory {repo}/.git` as kb's user"):
        make(repo, (tmp_path,), branch="main").list_pages(known={}, cursor={})


class _Redirector(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(301)
        self.send_header("Location", "http://10.0.0.1/elsewhere.git/info/refs?service=git-upload-pack")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_redirects_are_not_followed(tmp_path: Path):
    _Redirector.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        limits = Limits(roots=(tmp_path,), allowed_hosts=frozenset({"127.0.0.1"}), timeout=5)
        connector = make(f"http://127.0.0.1:{server.server_address[1]}/x.git", (tmp_path,), limits=limits)
        with pytest.raises(SourceError, match="kb follows no redirects"):
            connector.list_pages(known={}, cursor={})
        assert _Redirector.seen == ["/x.git/info/refs?service=git-upload-pack"]
        connector.close()
    finally:
        server.shutdown()
        server.server_close()
