"""kb.services.sources: a sync adds, replaces, renames and removes documents, one run at a time, resumable."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from ingestion.connectors import SourceError
from ingestion.processing import documents_process
from kb import credentials
from kb.access import system_user
from kb.models import AuditEvent, Chunk, Document, Source, SourceRun
from kb.services import sources as source_services
from kb.services.sources import source_add, source_remove, source_sync, sources_due
from tests.factories import make_collection, make_user, upload_document

pytestmark = pytest.mark.django_db


@pytest.fixture
def wiki(tmp_path, settings):
    root = tmp_path / "shares"
    (root / "wiki" / "ops").mkdir(parents=True)
    (root / "wiki" / "ops" / "backups.md").write_text("# Backups\n\nThe nightly backup runs at 02:00 with restic.\n")
    (root / "wiki" / "vpn.md").write_text("# VPN\n\nConnect with WireGuard; the config is on the intranet.\n")
    (root / "wiki" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    settings.KB_SOURCE_ROOTS = [str(root)]
    return root / "wiki"


def _sync(source: Source, **kwargs) -> SourceRun:
    run = source_sync(user=system_user(), source_id=source.pk, enqueue=False, **kwargs)
    queued = Document.objects.filter(source=source, status=Document.Status.QUEUED).values_list("pk", flat=True)
    documents_process(document_ids=list(queued))
    return run


def _paths(source: Source) -> set[str]:
    return set(Document.objects.filter(source=source).values_list("source_path", flat=True))


def _folder(collection, wiki, **kwargs) -> Source:
    return source_add(
        user=system_user(), collection=collection, kind="folder", location=str(wiki), sync=False, **kwargs
    )


def test_a_folder_source_first_sync_change_rename_and_deletion(wiki):
    collection = make_collection()
    source = _folder(collection, wiki, name="wiki")
    run = _sync(source)
    assert run.status == SourceRun.Status.DONE, run.error
    assert _paths(source) == {"wiki/ops/backups.md", "wiki/vpn.md"}
    assert run.summary["created"] == 2
    backups = Document.objects.get(source=source, source_path="wiki/ops/backups.md")
    assert backups.status == Document.Status.READY and backups.breadcrumb == ["wiki", "ops"]
    assert backups.source_modified is not None and backups.seen_at is not None
    first_chunks = set(Chunk.objects.filter(document=backups).values_list("pk", flat=True))

    # Nothing changed: nothing fetched again, nothing re-embedded.
    run = _sync(source)
    assert (run.summary["created"], run.summary["updated"], run.summary["unchanged"]) == (0, 0, 2)
    assert set(Chunk.objects.filter(document=backups).values_list("pk", flat=True)) == first_chunks

    # A change, a rename and a deletion.
    (wiki / "ops" / "backups.md").write_text("# Backups\n\nThe nightly backup now runs at 03:30 with borg.\n")
    (wiki / "vpn.md").rename(wiki / "remote-access.md")
    run = _sync(source)
    assert run.status == SourceRun.Status.DONE
    assert _paths(source) == {"wiki/ops/backups.md", "wiki/remote-access.md"}
    assert run.summary["renamed"] == [{"from": "wiki/vpn.md", "to": "wiki/remote-access.md"}]
    texts = " ".join(Chunk.objects.filter(document__source=source).values_list("text", flat=True))
    assert "03:30" in texts and "02:00" not in texts

    (wiki / "ops" / "backups.md").unlink()
    run = _sync(source)
    assert run.summary["removed"] == 1 and run.summary["removed_paths"] == ["wiki/ops/backups.md"]
    assert _paths(source) == {"wiki/remote-access.md"}
    assert not Chunk.objects.filter(document__source_path="wiki/ops/backups.md").exists()


def test_an_unreadable_source_fails_the_run_with_its_reason_and_removes_nothing(wiki):
    source = _folder(make_collection(), wiki)
    _sync(source)
    before = _paths(source)
    wiki.rename(wiki.with_name("moved"))
    run = _sync(source)
    assert run.status == SourceRun.Status.FAILED
    assert "moved" not in run.error and str(wiki) in run.error
    assert _paths(source) == before


def test_a_page_that_fails_is_a_failure_with_its_reason_and_the_rest_goes_on(wiki, settings):
    settings.KB_MAX_UPLOAD_MB = 1
    (wiki / "huge.txt").write_text("x" * (1024 * 1024 + 10))
    source = _folder(make_collection(), wiki)
    run = _sync(source)
    assert run.status == SourceRun.Status.DONE
    assert run.summary["refused"] == 1
    [error] = run.summary["errors"]
    assert error["source"].endswith("huge.txt") and "MB" in error["reason"]
    assert len(_paths(source)) == 2


def test_only_one_run_of_a_source_at_a_time_and_a_silent_one_is_taken_over(wiki, settings):
    source = _folder(make_collection(), wiki)
    alive = SourceRun.objects.create(source=source)
    assert source_sync(user=system_user(), source_id=source.pk, enqueue=False) is None
    assert not Document.objects.filter(source=source).exists()

    settings.KB_SOURCE_STALE_SECONDS = 60
    SourceRun.objects.filter(pk=alive.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert sources_due() == [source.pk]  # beat queues the abandoned run again
    run = _sync(source)
    assert run.pk == alive.pk and run.attempts == 2 and run.status == SourceRun.Status.DONE
    assert len(_paths(source)) == 2


def test_a_run_interrupted_midway_resumes_without_fetching_stored_pages_again(wiki, monkeypatch):
    source = _folder(make_collection(), wiki)
    from ingestion.connectors.folder import FolderConnector

    real_fetch = FolderConnector.fetch
    fetched: list[str] = []

    def dying_fetch(self, page):
        if fetched:  # the worker dies after storing one page
            raise KeyboardInterrupt
        fetched.append(page.path)
        return real_fetch(self, page)

    monkeypatch.setattr(FolderConnector, "fetch", dying_fetch)
    with pytest.raises(KeyboardInterrupt):
        source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    run = SourceRun.objects.get(source=source)
    assert run.status == SourceRun.Status.RUNNING and len(_paths(source)) == 1

    SourceRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    refetched: list[str] = []

    def counting_fetch(self, page):
        refetched.append(page.path)
        return real_fetch(self, page)

    monkeypatch.setattr(FolderConnector, "fetch", counting_fetch)
    run = _sync(source)
    assert run.status == SourceRun.Status.DONE and run.attempts == 2
    assert fetched[0] not in refetched and len(refetched) == 1
    assert len(_paths(source)) == 2
    assert Document.objects.filter(source=source, status=Document.Status.READY).count() == 2


def test_the_schedule_makes_a_source_due_and_moves_its_next_run_on(wiki):
    source = _folder(make_collection(), wiki, every_minutes=30)
    assert source.next_run_at > timezone.now() + timedelta(minutes=29)
    assert sources_due() == []
    later = source.next_run_at + timedelta(seconds=1)
    assert sources_due(now=later) == [source.pk]
    source.refresh_from_db()
    assert source.next_run_at == later + timedelta(minutes=30)
    assert sources_due(now=later) == []


def test_folder_and_local_git_locations_outside_the_roots_are_refused(wiki, tmp_path):
    collection = make_collection()
    for kind in ("folder", "git"):
        with pytest.raises(ValidationError, match="outside the folders kb may read"):
            source_add(user=system_user(), collection=collection, kind=kind, location=str(tmp_path), sync=False)
    with pytest.raises(ValidationError, match="http"):
        source_add(user=system_user(), collection=collection, kind="web", location="file:///etc/passwd", sync=False)
    with pytest.raises(ValidationError, match="remote repository"):
        source_add(user=system_user(), collection=collection, kind="git", location="ext::sh -c id", sync=False)
    assert not Source.objects.exists()


def test_credentials_are_stored_encrypted_and_never_in_the_audit_trail_or_logs(wiki, caplog):
    caplog.set_level(logging.DEBUG)
    token = "tok-3f9a-very-secret"
    source = source_add(
        user=system_user(), collection=make_collection(), kind="web",
        location="https://alice:pw-in-url@wiki.example/start", secret={"username": "alice", "token": token},
        sync=False,
    )  # fmt: skip
    stored = Source.objects.values_list("credentials", flat=True).get(pk=source.pk)
    assert token not in stored and "alice" not in stored
    assert credentials.decrypt(stored) == {"username": "alice", "token": token}
    assert source_services.source_config(source).credentials["token"] == token
    assert token not in repr(source_services.source_config(source))
    audit = list(AuditEvent.objects.values_list("detail", flat=True))
    assert "pw-in-url" not in str(audit) and token not in str(audit)
    assert token not in caplog.text and "pw-in-url" not in caplog.text


def test_credentials_under_a_changed_key_fail_the_run_asking_for_them_again(wiki, settings):
    source = _folder(make_collection(), wiki)
    Source.objects.filter(pk=source.pk).update(credentials=credentials.encrypt({"token": "t"}))
    settings.KB_CREDENTIALS_KEY = ["Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="]
    run = _sync(source)
    assert run.status == SourceRun.Status.FAILED and "enter them again" in run.error


def test_a_source_never_takes_over_an_uploaded_document_of_the_same_path(wiki):
    collection = make_collection()
    upload_document(collection, "wiki/vpn.md", "# Our own VPN page\n\nUploaded by hand.")
    source = _folder(collection, wiki, name="wiki")
    run = _sync(source)
    assert any("from an upload" in e["reason"] for e in run.summary["errors"])
    assert Document.objects.get(source_path="wiki/vpn.md").source is None


def test_removing_a_source_removes_its_documents_unless_kept(wiki):
    collection = make_collection()
    source = _folder(collection, wiki)
    _sync(source)
    kept = _folder(collection, wiki, name="kept")
    _sync(kept)
    assert source_remove(user=system_user(), source=source) == 2
    assert source_remove(user=system_user(), source=kept, keep_documents=True) == 0
    assert set(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == {
        "kept/ops/backups.md", "kept/vpn.md",
    }  # fmt: skip
    assert not Source.objects.exists()


def test_viewers_cannot_add_sync_or_remove_sources(wiki):
    viewer = make_user()
    collection = make_collection(viewer=[viewer])
    source = _folder(collection, wiki)
    with pytest.raises(PermissionError):
        source_add(user=viewer, collection=collection, kind="folder", location=str(wiki), sync=False)
    with pytest.raises(PermissionError):
        source_sync(user=viewer, source_id=source.pk)
    with pytest.raises(PermissionError):
        source_remove(user=viewer, source=source)


def test_a_connector_error_message_is_the_runs_reason(wiki, monkeypatch):
    source = _folder(make_collection(), wiki)

    def refuse(config):
        raise SourceError("Refused http://10.0.0.1/: a private address.")

    monkeypatch.setattr(source_services, "open_connector", refuse)
    run = _sync(source)
    assert run.status == SourceRun.Status.FAILED and run.error == "Refused http://10.0.0.1/: a private address."


@pytest.mark.django_db(transaction=True)
def test_a_long_listing_keeps_the_runs_heartbeat_fresh_so_it_is_not_taken_over(wiki, settings, monkeypatch):
    settings.KB_SOURCE_STALE_SECONDS = 4  # a heartbeat each second
    source = _folder(make_collection(), wiki)
    from ingestion.connectors.folder import FolderConnector

    real_list = FolderConnector.list_pages
    beats = []

    rival, listings = [], []

    def slow_list(self, **kwargs):
        listings.append(1)
        if len(listings) == 1:  # the first run's listing is slow; a rival's (if one wrongly starts) is not
            run = SourceRun.objects.get(source=source)
            for _ in range(6):  # a crawl with a politeness delay: six seconds without storing a page
                time.sleep(1)
                beats.append(SourceRun.objects.get(pk=run.pk).heartbeat_at)
            rival.append(source_sync(user=system_user(), source_id=source.pk, enqueue=False))
        return real_list(self, **kwargs)

    monkeypatch.setattr(FolderConnector, "list_pages", slow_list)
    run = source_sync(user=system_user(), source_id=source.pk, enqueue=False)
    assert rival == [None]  # a second start found the run alive and did not take it over
    assert run.status == SourceRun.Status.DONE and run.attempts == 1
    assert len(set(beats)) >= 3  # the heartbeat moved while nothing was stored


def test_a_page_moved_onto_the_path_of_an_uploaded_document_is_refused_not_a_crash(wiki):
    collection = make_collection()
    source = _folder(collection, wiki, name="wiki")
    _sync(source)
    upload_document(collection, "wiki/remote-access.md", "# Remote access\n\nWritten by hand.")
    (wiki / "vpn.md").rename(wiki / "remote-access.md")
    run = _sync(source)
    assert run.status == SourceRun.Status.DONE
    assert any(e["source"] == "wiki/remote-access.md" for e in run.summary["errors"])
    assert Document.objects.get(source_path="wiki/remote-access.md").source is None
