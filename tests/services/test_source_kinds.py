"""Each kind of source synced through kb.services.sources: first sync, a change, a deletion,
addresses for citations, and credentials kept out of every message and log line."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from kb.access import system_user
from kb.models import Document, Source, SourceRun
from kb.services.sources import source_add, source_sync
from tests.confluence_standin import ConfluenceStandin
from tests.factories import make_collection
from tests.mediawiki_standin import MediaWikiStandin
from tests.site_standin import Site

pytestmark = pytest.mark.django_db

TOKEN = "s3cr3t-token-never-logged-9917"


def _sync(source: Source) -> SourceRun:
    run = source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    assert run is not None
    return run


def _documents(source: Source) -> dict[str, Document]:
    return {d.source_path: d for d in Document.objects.filter(source=source)}


@pytest.fixture
def loopback(settings):
    settings.KB_SOURCE_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.KB_SOURCE_DELAY = 0


def _html(title: str, body: str) -> str:
    return f"<html><head><title>{title}</title></head><body>{body}</body></html>"


def _git(repo, *args: str) -> str:
    env = {"GIT_AUTHOR_DATE": "2025-01-02T03:04:05Z", "GIT_COMMITTER_DATE": "2025-01-02T03:04:05Z"}
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        check=True, capture_output=True, text=True, env={**os.environ, **env},
    ).stdout.strip()  # fmt: skip


def test_a_git_repository_syncs_changed_files_with_links_to_the_file_at_its_commit(tmp_path, settings):
    repo = tmp_path / "repos" / "handbook"
    (repo / "guides").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "guides" / "deploy.md").write_text("# Deploy\n\nDeploys run from the release branch on Tuesdays.\n")
    (repo / "README.md").write_text("# Handbook\n\nHow the team works.\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    settings.KB_SOURCE_ROOTS = [str(tmp_path / "repos")]
    source = source_add(
        user=system_user(), collection=make_collection(), kind="git", location=str(repo), branch="main",
        options={"web_url": "https://git.example/team/handbook/blob/{commit}/{path}"}, sync=False,
    )  # fmt: skip
    run = _sync(source)
    commit = _git(repo, "rev-parse", "HEAD")
    documents = _documents(source)
    assert run.status == "done" and set(documents) == {"handbook/guides/deploy.md", "handbook/README.md"}
    deploy = documents["handbook/guides/deploy.md"]
    assert deploy.url == f"https://git.example/team/handbook/blob/{commit}/guides/deploy.md"
    assert deploy.source_modified.year == 2025 and deploy.breadcrumb == ["handbook", "guides"]

    (repo / "guides" / "deploy.md").write_text("# Deploy\n\nDeploys now run on Thursdays.\n")
    (repo / "README.md").unlink()
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "second")
    run = _sync(source)
    assert (run.summary["updated"], run.summary["removed"], run.summary["unchanged"]) == (1, 1, 0)
    assert _documents(source)["handbook/guides/deploy.md"].url.endswith(
        f"/{_git(repo, 'rev-parse', 'HEAD')}/guides/deploy.md"
    )


def test_an_intranet_site_syncs_pages_that_cite_their_own_urls(loopback):
    site = Site()
    try:
        site.add("/", _html("Home", "<a href='/it/vpn'>VPN</a> <a href='/it/mail'>Mail</a>"))
        site.add("/it/vpn", _html("VPN", "<main><p>Use WireGuard.</p></main>"),
                 headers={"Last-Modified": "Mon, 02 Feb 2026 08:00:00 GMT"})  # fmt: skip
        site.add("/it/mail", _html("Mail", "<main><p>Use IMAP.</p></main>"))
        source = source_add(user=system_user(), collection=make_collection(), kind="web", location=site.url + "/",
                            sync=False)  # fmt: skip
        run = _sync(source)
        documents = _documents(source)
        assert run.status == "done" and run.summary["created"] == 3
        vpn = documents["127.0.0.1/it/vpn.html"]
        assert vpn.url == f"{site.url}/it/vpn" and vpn.title == "VPN" and vpn.source_modified.month == 2

        site.routes.pop("/it/mail")
        site.add("/", "<html><head><title>Home</title></head><body><a href='/it/vpn'>VPN</a></body></html>")
        run = _sync(source)
        assert run.summary["removed_paths"] == ["127.0.0.1/it/mail.html"]
        assert run.summary["unchanged"] == 1 and run.summary["updated"] == 1  # the home page changed
    finally:
        site.close()


def test_a_page_that_fails_on_an_intranet_site_is_kept_and_named(loopback):
    site = Site()
    try:
        site.add("/", "<html><body><a href='/a'>A</a> <a href='/b'>B</a></body></html>")
        site.add("/a", "<html><body><main><p>Page A.</p></main></body></html>")
        site.add("/b", "<html><body><main><p>Page B.</p></main></body></html>")
        source = source_add(user=system_user(), collection=make_collection(), kind="web", location=site.url + "/",
                            sync=False)  # fmt: skip
        _sync(source)
        site.add("/b", "oops", status=500, content_type="text/plain")
        run = _sync(source)
        assert run.status == "done" and any(e["source"].endswith("/b") for e in run.summary["errors"])
        assert "127.0.0.1/b.html" in _documents(source)  # a failure is not a deletion
    finally:
        site.close()


def test_a_confluence_space_syncs_its_page_tree_and_fetches_only_changed_versions(loopback):
    with ConfluenceStandin(username="kb@corp.example", token=TOKEN) as wiki:
        home = wiki.add("Home", "<p>Welcome to the team space.</p>")
        guides = wiki.add("Guides", "<p>All guides.</p>", parent=home.id)
        install = wiki.add("Install", "<p>Run the installer as root.</p>", parent=guides.id)
        source = source_add(
            user=system_user(), collection=make_collection(), kind="confluence", location=wiki.url,
            options={"space": "KB"}, secret={"username": "kb@corp.example", "token": TOKEN}, sync=False,
        )  # fmt: skip
        run = _sync(source)
        documents = _documents(source)
        assert run.status == "done", run.error
        page = documents["KB/Home/Guides/Install.html"]
        assert page.breadcrumb == ["KB", "Home", "Guides"] and page.url.startswith(wiki.url) and page.source_modified

        wiki.edit(install.id, body="<p>Run the installer as an ordinary user.</p>")
        bodies_before = sum(1 for seen in wiki.requests if "body.storage" in seen.path)
        run = _sync(source)
        bodies = sum(1 for seen in wiki.requests if "body.storage" in seen.path) - bodies_before
        assert (run.summary["updated"], run.summary["unchanged"], bodies) == (1, 2, 1)


def test_refused_confluence_credentials_fail_the_run_without_the_token_anywhere(loopback, caplog):
    caplog.set_level(logging.DEBUG)
    with ConfluenceStandin(username="kb@corp.example", token="the-right-one") as wiki:
        wiki.add("Home")
        source = source_add(
            user=system_user(), collection=make_collection(), kind="confluence", location=wiki.url,
            options={"space": "KB"}, secret={"username": "kb@corp.example", "token": TOKEN}, sync=False,
        )  # fmt: skip
        run = _sync(source)
    assert run.status == "failed" and "credentials" in run.error.lower()
    assert TOKEN not in run.error and TOKEN not in caplog.text and TOKEN not in str(run.summary)


def test_a_mediawiki_syncs_articles_with_their_revision_and_address(loopback):
    with MediaWikiStandin() as wiki:
        wiki.add("Backups", "<p>Backups run nightly.</p>")
        wiki.add("Backups/Restore", "<p>Restore with the runbook.</p>")
        source = source_add(user=system_user(), collection=make_collection(), kind="mediawiki", location=wiki.url,
                            sync=False)  # fmt: skip
        run = _sync(source)
        documents = _documents(source)
        assert run.status == "done", run.error
        restore = next(d for p, d in documents.items() if p.endswith("Restore.html"))
        assert restore.breadcrumb[-1] == "Backups" and "Restore" in restore.url

        wiki.move("Backups/Restore", "Restoring")
        run = _sync(source)
        assert run.summary.get("renamed") or run.summary["removed"] == 1
        assert any(p.endswith("Restoring.html") for p in _documents(source))
        assert not any(p.endswith("Restore.html") for p in _documents(source))


def test_a_second_sync_of_a_site_asks_conditionally_and_downloads_no_unchanged_page(loopback):
    site = Site()
    try:
        site.add("/", _html("Home", "<a href='/a'>A</a> <a href='/b'>B</a>"), headers={"ETag": '"home-1"'})
        site.add("/a", _html("A", "<main><p>Page A.</p></main>"), headers={"ETag": '"a-1"'})
        site.add("/b", _html("B", "<main><p>Page B.</p></main>"), headers={"ETag": '"b-1"'})
        source = source_add(user=system_user(), collection=make_collection(), kind="web", location=site.url + "/",
                            sync=False)  # fmt: skip
        _sync(source)
        site.answers.clear()
        site.add("/b", _html("B", "<main><p>Page B, changed.</p></main>"), headers={"ETag": '"b-2"'})
        run = _sync(source)
        assert (run.summary["unchanged"], run.summary["updated"]) == (2, 1)
        pages = dict(site.answers)
        assert pages["/"] == 304 and pages["/a"] == 304 and pages["/b"] == 200
    finally:
        site.close()
