"""Upload batches: progress with time left, polling that stops, cancel, and stale-job recovery."""

import io
import time
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from ingestion.processing import document_process, documents_process
from ingestion.status import document_mark, documents_recover_stale, heartbeat
from kb import selectors
from kb.access import system_user
from kb.models import Chunk, Document, UploadBatch
from kb.services.documents import archive_upload, batch_add_file, batch_cancel, batch_create, document_upload
from kb.services.reindex import collection_reindex
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user
from tests.ingestion.builders import make_zip

pytestmark = pytest.mark.django_db


def _batch_of(collection, *names, user=None):
    user = user or system_user()
    batch = batch_create(user=user, collection=collection, label=f"{len(names)} files")
    for name in names:
        batch_add_file(
            user=user, batch=batch, file=io.BytesIO(f"# {name}\n\nText of {name}.".encode()), name=name, enqueue=False
        )
    return batch


def _progress(batch):
    """The batch's progress as the collection page reads it."""
    [shown] = [b for b in selectors.batch_overview(user=system_user(), collection=batch.collection) if b == batch]
    return shown.progress


def test_progress_counts_documents_and_the_embedded_share_of_those_in_progress():
    collection = make_collection()
    batch = _batch_of(collection, "a.md", "b.md", "c.md", "d.md")
    a, b, c, d = Document.objects.filter(batch=batch).order_by("source_path")
    document_process(document_id=a.pk)
    document_mark(document_id=b.pk, status=Document.Status.FAILED, error="bad")
    document_mark(document_id=c.pk, status=Document.Status.PROCESSING, stage="embedding", done=1, total=2)
    # Time waiting in the queue is no measure of the work: the rate counts from the first start.
    UploadBatch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(seconds=500))
    Document.objects.filter(pk=a.pk).update(started_at=timezone.now() - timedelta(seconds=50))
    batch.refresh_from_db()

    progress = _progress(batch)

    assert (progress.total, progress.ready, progress.failed, progress.processing, progress.queued) == (4, 1, 1, 1, 1)
    assert progress.fraction == pytest.approx(2.5 / 4)
    assert progress.eta_seconds == pytest.approx(30, abs=2)  # 50 s for 62.5 %: 30 s more at that rate
    assert progress.eta_text == "about 30 s left"
    assert not progress.done


def test_cancelling_a_batch_cancels_what_is_unfinished_and_says_so():
    editor = make_user("ed")
    collection = make_collection(editor=[editor])
    batch = _batch_of(collection, "a.md", "b.md", user=editor)
    done, waiting = Document.objects.filter(batch=batch).order_by("source_path")
    document_process(document_id=done.pk)

    assert batch_cancel(user=editor, batch=batch) == 1

    waiting.refresh_from_db()
    assert waiting.status == Document.Status.CANCELLED and waiting.error == "Cancelled by ed before it finished."
    document_process(document_id=waiting.pk)  # a task still in the queue does nothing
    waiting.refresh_from_db()
    assert waiting.status == Document.Status.CANCELLED and not Chunk.objects.filter(document=waiting).exists()
    assert _progress(batch).done
    done.refresh_from_db()
    assert done.status == Document.Status.READY


def test_a_worker_mid_document_stops_at_its_next_progress_mark_when_cancelled(settings, monkeypatch):
    settings.KB_EMBED_BATCH_SIZE = 1
    collection = make_collection()
    long = "\n\n".join(f"## Step {n}\n\n" + "Replicas keep a nightly snapshot. " * 20 for n in range(6))
    batch = _batch_of(collection)
    batch_add_file(
        user=system_user(), batch=batch, file=io.BytesIO(long.encode()), name="runbook.md", enqueue=False
    )
    document = Document.objects.get(batch=batch)
    from ingestion import pipeline

    real_embed = pipeline.embed_texts

    def cancel_after_first_batch(texts, *, progress=None, embedder=None):
        def progress_then_cancel(done, total):
            if done == 1:
                batch_cancel(user=system_user(), batch=batch)
            progress(done, total)

        return real_embed(texts, progress=progress_then_cancel, embedder=embedder)

    monkeypatch.setattr(pipeline, "embed_texts", cancel_after_first_batch)
    document_process(document_id=document.pk)

    document.refresh_from_db()
    assert document.status == Document.Status.CANCELLED and document.progress_done == 0
    assert not Chunk.objects.filter(document=document).exists()


def test_a_cancelled_document_uploaded_again_is_processed_again():
    collection = make_collection()
    batch = _batch_of(collection, "a.md")
    batch_cancel(user=system_user(), batch=batch)
    again = document_upload(
        user=system_user(),
        collection=collection,
        file=io.BytesIO(b"# a.md\n\nText of a.md."),
        source_path="a.md",
        enqueue=False,
    )
    assert again.outcome == "updated" and again.document.status == Document.Status.QUEUED


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """The ids sent to the ingest task, captured instead of reaching the broker."""
    from ingestion import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: sent.append(pk))
    return sent


def test_a_stale_processing_document_is_requeued_once_then_failed(settings, django_capture_on_commit_callbacks, queued):
    settings.KB_STALE_SECONDS = 60
    document = add_document(make_collection(), "a.md", "# A\n\nText.", process=False)
    long_ago = timezone.now() - timedelta(seconds=120)
    Document.objects.filter(pk=document.pk).update(status=Document.Status.PROCESSING, attempts=1, updated_at=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        assert documents_recover_stale() == {"requeued": 1, "failed": 0}
    document.refresh_from_db()
    assert document.status == Document.Status.QUEUED and queued == [document.pk]

    Document.objects.filter(pk=document.pk).update(status=Document.Status.PROCESSING, attempts=2, updated_at=long_ago)
    assert documents_recover_stale() == {"requeued": 0, "failed": 1}
    document.refresh_from_db()
    assert document.status == Document.Status.FAILED and "stopped without finishing 2 times" in document.error


def test_a_queued_document_whose_message_was_lost_is_sent_again(settings, django_capture_on_commit_callbacks, queued):
    settings.KB_STALE_SECONDS = 60
    settings.KB_QUEUED_LOST_SECONDS = 300
    lost = add_document(make_collection(), "a.md", "# A\n\nText.", process=False)
    waiting = add_document(make_collection(), "w.md", "# W\n\nText.", process=False)
    recent = add_document(make_collection(), "b.md", "# B\n\nText.", process=False)
    Document.objects.filter(pk=lost.pk).update(updated_at=timezone.now() - timedelta(seconds=400))
    # Queued longer than a silent processing document may be, but perhaps just behind a backlog.
    Document.objects.filter(pk=waiting.pk).update(updated_at=timezone.now() - timedelta(seconds=120))

    with django_capture_on_commit_callbacks(execute=True):
        assert documents_recover_stale() == {"requeued": 1, "failed": 0}
    assert queued == [lost.pk], "only the document queued for longer than KB_QUEUED_LOST_SECONDS is sent again"
    lost.refresh_from_db()
    assert lost.status == Document.Status.QUEUED
    # Sent again just now: not again on the next look.
    assert documents_recover_stale() == {"requeued": 0, "failed": 0}
    assert recent.status == Document.Status.QUEUED


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has a connection of its own
def test_a_running_tasks_heartbeat_keeps_its_silent_document_from_being_taken_for_dead(settings):
    """Parsing a large file marks no progress; the heartbeat thread speaks for it."""
    settings.KB_HEARTBEAT_SECONDS = 0.2
    settings.KB_STALE_SECONDS = 60
    document = add_document(make_collection(), "a.md", "# A\n\nText.", process=False)
    long_ago = timezone.now() - timedelta(seconds=120)
    Document.objects.filter(pk=document.pk).update(status=Document.Status.PROCESSING, updated_at=long_ago)
    with heartbeat([document.pk]):
        time.sleep(0.7)  # a silent parse
        assert documents_recover_stale() == {"requeued": 0, "failed": 0}
    beaten = Document.objects.get(pk=document.pk).updated_at
    time.sleep(0.5)
    assert Document.objects.get(pk=document.pk).updated_at == beaten, "the beat stops with its block"


def test_a_document_still_reporting_progress_is_not_stale(settings):
    settings.KB_STALE_SECONDS = 60
    document = add_document(make_collection(), "a.md", "# A\n\nText.", process=False)
    document_mark(
        document_id=document.pk, status=Document.Status.PROCESSING, stage="embedding", done=1, total=3
    )
    assert documents_recover_stale() == {"requeued": 0, "failed": 0}


# -- views --------------------------------------------------------------------------------------


def _files(*names):
    return [SimpleUploadedFile(n, f"# {n}\n\nBody of {n}.".encode()) for n in names]


@pytest.fixture
def editor_client(client):
    editor = make_user("editor")
    collection = make_collection("docs", editor=[editor])
    client.force_login(editor)
    return client, collection


def test_a_multi_file_upload_is_one_batch_whose_partial_polls_until_done(editor_client):
    client, collection = editor_client
    response = client.post(
        reverse("document_upload", args=[collection.pk]),
        {"files": _files("a.md", "b.md", "c.md")},
        headers={"HX-Request": "true"},
    )
    batch = UploadBatch.objects.get(collection=collection)
    assert batch.label == "3 files" and Document.objects.filter(batch=batch).count() == 3
    html = response.content.decode()
    assert 'hx-trigger="every 1s"' in html and "0 of 3 ready" in html and "Cancel upload" in html

    for document in Document.objects.filter(batch=batch):
        document_process(document_id=document.pk)
    poll = client.get(
        reverse("collection_detail", args=[collection.pk]) + "?part=batches", headers={"HX-Request": "true"}
    ).content.decode()
    assert poll.lstrip().startswith('<section id="batches"')
    assert "3 of 3 ready" in poll and "Done." in poll
    assert "hx-trigger" not in poll and "Cancel upload" not in poll  # polling stops with the final counts


def test_the_cancel_button_cancels_the_batch(editor_client):
    client, collection = editor_client
    client.post(reverse("document_upload", args=[collection.pk]), {"files": _files("a.md", "b.md")})
    batch = UploadBatch.objects.get(collection=collection)

    response = client.post(reverse("batch_cancel", args=[batch.pk]), headers={"HX-Request": "true"})

    html = response.content.decode()
    assert response.status_code == 200 and "2 cancelled" in html and "Done." in html
    assert set(Document.objects.filter(batch=batch).values_list("status", flat=True)) == {"cancelled"}


def test_viewers_cannot_cancel_a_batch(client):
    viewer = make_user("viewer")
    collection = make_collection(viewer=[viewer])
    batch = _batch_of(collection, "a.md")
    client.force_login(viewer)
    assert client.post(reverse("batch_cancel", args=[batch.pk])).status_code == 404
    assert Document.objects.get(batch=batch).status == Document.Status.QUEUED


def test_the_beat_sweep_fails_a_stale_document_and_the_next_poll_shows_it(editor_client, settings, monkeypatch):
    # Watching progress writes nothing (tests/test_beat.py): recovery is celery beat's sweep.
    from ingestion import tasks

    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: None)
    client, collection = editor_client
    settings.KB_STALE_SECONDS = 60
    batch = _batch_of(collection, "a.md")
    Document.objects.filter(batch=batch).update(
        status=Document.Status.PROCESSING, attempts=5, updated_at=timezone.now() - timedelta(hours=1)
    )
    tasks.recover_stale_documents()
    poll = client.get(
        reverse("collection_detail", args=[collection.pk]) + "?part=batches", headers={"HX-Request": "true"}
    ).content.decode()
    assert "1 failed" in poll and "stopped without finishing" in Document.objects.get(batch=batch).error


def test_an_archive_upload_in_the_browser_reports_its_sync(editor_client):
    client, collection = editor_client
    archive = SimpleUploadedFile("wiki.zip", make_zip({"a.md": "# A\n\nOne.", "b/c.md": "# C\n\nTwo."}).getvalue())
    client.post(reverse("document_upload", args=[collection.pk]), {"files": [archive]})
    archive = SimpleUploadedFile("wiki.zip", make_zip({"a.md": "# A\n\nOne."}).getvalue())
    response = client.post(
        reverse("document_upload", args=[collection.pk]), {"files": [archive]}, headers={"HX-Request": "true"}
    )

    html = response.content.decode()
    assert "0 new, 0 changed, 1 unchanged, 1 removed (gone from the archive)" in html
    assert list(Document.objects.filter(collection=collection).values_list("source_path", flat=True)) == ["a.md"]


def test_document_page_shows_the_archive_breadcrumb(editor_client):
    client, collection = editor_client
    archive_upload(
        user=system_user(),
        collection=collection,
        name="wiki.zip",
        enqueue=False,
        file=make_zip({"ops/runbooks/backups.md": "# Backups\n\nSee [restore](restore.md)."}),
    )
    document = Document.objects.get(collection=collection)
    document_process(document_id=document.pk)
    html = client.get(reverse("document_detail", args=[document.pk])).content.decode()
    assert " / ops / runbooks / backups.md" in html and "From the archive wiki.zip" in html
    assert "ops/runbooks/restore.md" in html


def test_reindex_replaces_every_chunk_of_the_collection():
    collection = make_collection()
    document = add_document(collection, "backups.md", BACKUPS)
    old = set(Chunk.objects.filter(document=document).values_list("pk", flat=True))

    assert collection_reindex(user=system_user(), collection=collection, inline=True) == 1

    new = set(Chunk.objects.filter(document=document).values_list("pk", flat=True))
    assert new and not new & old
    document.refresh_from_db()
    assert document.status == Document.Status.READY and document.chunk_count == len(new)


def test_kb_reindex_re_embeds_a_collection_by_name():
    from django.core.management import call_command

    collection = make_collection("Ops")
    document = add_document(collection, "backups.md", BACKUPS)
    old = set(Chunk.objects.filter(document=document).values_list("pk", flat=True))
    out = io.StringIO()
    call_command("kb_reindex", "--collection", "Ops", "--inline", stdout=out, stderr=io.StringIO())
    assert out.getvalue().splitlines() == [
        "Re-embedded 1 document(s) of Ops.",
        "Ops searches with all-MiniLM-L6-v2 (bundled), 384 dims.",
    ]
    assert not set(Chunk.objects.filter(document=document).values_list("pk", flat=True)) & old


def test_kb_reindex_refuses_a_model_too_large_to_index_and_keeps_the_chunks(settings):
    from django.core.management import CommandError, call_command

    collection = make_collection("Ops")
    document = add_document(collection, "backups.md", BACKUPS)
    old = set(Chunk.objects.filter(document=document).values_list("pk", flat=True))
    settings.KB_EMBED_DIM = 3072
    with pytest.raises(CommandError, match="HNSW index takes vectors of 1 to 2,000 dimensions, not 3072"):
        call_command("kb_reindex", "--collection", "Ops", "--inline", stdout=io.StringIO(), stderr=io.StringIO())
    assert set(Chunk.objects.filter(document=document).values_list("pk", flat=True)) == old


def test_the_admin_action_queues_a_reindex(client, django_capture_on_commit_callbacks, monkeypatch):
    from ingestion import tasks

    queued = []
    monkeypatch.setattr(tasks.reindex_document, "delay", lambda pk: queued.append(pk))
    admin = make_user("root", is_staff=True, is_superuser=True)
    collection = make_collection(owner=admin)
    document = add_document(collection, "backups.md", BACKUPS)
    client.force_login(admin)
    response = client.post(
        reverse("admin:kb_collection_changelist"),
        {"action": "reindex", "_selected_action": [collection.pk]},
        follow=True,
    )
    assert response.status_code == 200 and queued == [document.pk]
    assert "1 document(s) queued for re-embedding" in response.content.decode()


# --- an archive's pages: tasks of KB_INGEST_GROUP documents, one embedding pass each ----------


@pytest.fixture
def passes(monkeypatch) -> list[int]:
    """How many texts each embedding pass was given (the real pass still runs)."""
    from ingestion import pipeline

    sizes: list[int] = []
    real = pipeline.embed_texts

    def counted(texts, **kwargs):
        sizes.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(pipeline, "embed_texts", counted)
    return sizes


def _wiki(*names: str) -> io.BytesIO:
    return make_zip({name: f"# {name}\n\nText of {name}, on its own page." for name in names})


def test_an_archive_is_queued_in_groups_each_embedded_in_one_pass(
    settings, monkeypatch, django_capture_on_commit_callbacks, passes
):
    from ingestion import tasks

    settings.KB_INGEST_GROUP = 2
    collection = make_collection()
    add_document(collection, "same.md", "# same.md\n\nText of same.md, on its own page.")  # unchanged: not queued
    groups: list[list[int]] = []
    monkeypatch.setattr(tasks.ingest_documents, "delay", lambda ids: groups.append(ids))
    monkeypatch.setattr(tasks.ingest_document, "delay", lambda pk: pytest.fail("queued one page alone"))
    passes.clear()

    with django_capture_on_commit_callbacks(execute=True):
        archive_upload(
            user=system_user(), collection=collection, file=_wiki("a.md", "b.md", "c.md", "same.md"), name="wiki.zip"
        )

    pages = dict(Document.objects.filter(collection=collection).values_list("source_path", "pk"))
    assert groups == [[pages["a.md"], pages["b.md"]], [pages["c.md"]]]
    for ids in groups:
        tasks.ingest_documents(ids)  # what the worker runs
    assert passes == [2, 1]  # one pass per task, over all of its documents' chunks
    assert set(Document.objects.values_list("status", flat=True)) == {Document.Status.READY}
    assert Chunk.objects.filter(document_id=pages["b.md"]).count() == 1


def test_a_page_failing_unexpectedly_fails_alone_and_its_group_goes_on(monkeypatch):
    from ingestion import readers

    collection = make_collection()
    archive_upload(
        user=system_user(), collection=collection, file=_wiki("a.md", "bad.md", "c.md"), name="wiki.zip", enqueue=False
    )
    real_read = readers.read

    def read(path, *, name):
        if name == "bad.md":
            raise RuntimeError("a reader bug")
        return real_read(path, name=name)

    monkeypatch.setattr(readers, "read", read)
    documents_process(document_ids=list(Document.objects.values_list("pk", flat=True)))

    status = {d.source_path: (d.status, d.error) for d in Document.objects.all()}
    assert status["bad.md"] == (
        Document.Status.FAILED,
        "Processing stopped on an unexpected error (RuntimeError); the worker log has details.",
    )
    assert status["a.md"][0] == status["c.md"][0] == Document.Status.READY


def test_a_shared_pass_shows_its_progress_on_each_page_and_stops_when_its_batch_is_cancelled(settings):
    settings.KB_EMBED_BATCH_SIZE = 1
    editor = make_user("ed")
    collection = make_collection(editor=[editor])
    batch = batch_create(user=editor, collection=collection, label="wiki.zip")
    batch_add_file(
        user=editor, batch=batch, file=_wiki("a.md", "b.md", "c.md"), name="wiki.zip", enqueue=False
    )
    ids = list(Document.objects.filter(batch=batch).values_list("pk", flat=True))
    seen = []

    def progress(done, total):
        seen.append({(d.stage, d.progress_done, d.progress_total) for d in Document.objects.filter(pk__in=ids)})
        batch_cancel(user=editor, batch=batch)

    documents_process(document_ids=ids, progress=progress)

    assert seen == [{("embedding", 1, 3)}]  # every page of the pass, then the pass stopped at its next mark
    assert set(Document.objects.values_list("status", flat=True)) == {Document.Status.CANCELLED}
    assert not Chunk.objects.filter(document_id__in=ids).exists()
