"""The collection's documents list and upload progress (issue 15): search, status filter,
folders, pages, each document's own state, and a time left that does not swing."""

import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from ingestion.status import document_mark
from kb import selectors
from kb.access import system_user
from kb.models import Document
from kb.selectors.documents import BatchProgress, _progress
from kb.services.documents import batch_add_file, batch_create
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def wiki():
    viewer = make_user("viewer")
    collection = make_collection("wiki", viewer=[viewer])
    for path in ("ops/runbooks/backups.md", "ops/runbooks/restore.md", "ops/oncall.md", "hr/vacation.md", "readme.md"):
        add_document(collection, path, f"# {path}\n\nAbout {path}.", process=path != "readme.md")
    document_mark(document_id=Document.objects.get(source_path="hr/vacation.md").pk,
                  status=Document.Status.FAILED, error="Unreadable.")  # fmt: skip
    return {"viewer": viewer, "collection": collection}


def _get(client, wiki, htmx_target: str | None = None, **params):
    headers = {"HX-Request": "true", "HX-Target": htmx_target} if htmx_target else {}
    url = reverse("collection_detail", args=[wiki["collection"].pk])
    client.force_login(wiki["viewer"])
    return client.get(url, params, headers=headers).content.decode()


def _paths(listing) -> list[str]:
    return [d.source_path for d in listing.documents]


def test_search_matches_titles_and_paths(wiki):
    page = selectors.document_page(user=wiki["viewer"], collection=wiki["collection"], query="RUNBOOKS")
    assert _paths(page) == ["ops/runbooks/backups.md", "ops/runbooks/restore.md"]
    assert page.total == 5 and page.filtered


def test_the_status_filter_groups_statuses_as_a_reader_asks(wiki):
    def listed(status):
        return _paths(selectors.document_page(user=wiki["viewer"], collection=wiki["collection"], status=status))

    assert listed("failed") == ["hr/vacation.md"]
    assert listed("processing") == ["readme.md"]  # queued counts as processing
    assert len(listed("ready")) == 3
    assert len(listed("nonsense")) == 5  # an unknown status filters nothing


def test_folders_list_what_is_below_with_a_breadcrumb_back_up(wiki):
    top = selectors.document_page(user=wiki["viewer"], collection=wiki["collection"])
    assert top.folders == [("hr", "hr", 1), ("ops", "ops", 3)] and top.breadcrumb == []
    ops = selectors.document_page(user=wiki["viewer"], collection=wiki["collection"], folder="/ops/")
    assert ops.folder == "ops" and ops.folders == [("runbooks", "ops/runbooks", 2)]
    assert _paths(ops) == ["ops/oncall.md", "ops/runbooks/backups.md", "ops/runbooks/restore.md"]
    deep = selectors.document_page(user=wiki["viewer"], collection=wiki["collection"], folder="ops/runbooks")
    assert deep.breadcrumb == [("ops", "ops"), ("runbooks", "ops/runbooks")]
    escaped = selectors.document_page(user=wiki["viewer"], collection=wiki["collection"], folder="../ops/./")
    assert escaped.folder == "ops"


def test_long_lists_come_fifty_to_a_page(client):
    viewer = make_user()
    collection = make_collection(viewer=[viewer])
    for n in range(55):
        add_document(collection, f"page-{n:02d}.md", f"# Page {n}\n\nText number {n}.", process=False)
    first = selectors.document_page(user=viewer, collection=collection)
    second = selectors.document_page(user=viewer, collection=collection, page="2")
    assert len(first.documents) == 50 and _paths(second) == [f"page-{n}.md" for n in range(50, 55)]
    assert selectors.document_page(user=viewer, collection=collection, page="x").page.number == 1
    client.force_login(viewer)
    html = client.get(reverse("collection_detail", args=[collection.pk]), {"page": 2}).content.decode()
    assert "51–55 of 55 documents" in html and "Page 2 of 2" in html and 'rel="prev"' in html


def test_the_list_works_as_a_plain_get_form_without_javascript(client, wiki):
    html = _get(client, wiki, q="vacation", status="failed")
    assert 'method="get"' in html and 'name="q"' in html and 'value="vacation"' in html
    assert "hr/vacation.md" in html and "ops/oncall.md" not in html
    assert '<option value="failed" selected>' in html
    assert 'for="id_q"' in html and 'for="id_status"' in html  # real labels


def test_htmx_swaps_the_list_alone_keeping_filters_in_its_poll_and_pushed_url(client, wiki):
    part = _get(client, wiki, htmx_target="documents", folder="ops", q="back")
    assert part.lstrip().startswith('<section id="documents"') and "<html" not in part
    assert 'hx-get="/collections/{}/?q=back&amp;folder=ops"'.format(wiki["collection"].pk) in part
    assert "ops/runbooks/backups.md" in part and "ops/oncall.md" not in part
    assert 'hx-trigger="kb:documents-changed from:body"' in part  # nothing pending under ops: no polling
    browser = _get(client, wiki, htmx_target="document-browser", folder="ops")
    assert browser.lstrip().startswith('<section id="document-browser"') and 'value="ops"' in browser
    assert 'hx-push-url="true"' in browser
    # A history restore after the cache is gone gets the whole page back.
    client.force_login(wiki["viewer"])
    url = reverse("collection_detail", args=[wiki["collection"].pk])
    restored = client.get(url, {"folder": "ops"}, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restored.content.decode()


def test_the_list_polls_while_a_document_is_pending(client, wiki):
    part = _get(client, wiki, htmx_target="documents")
    assert "every 2s" in part


def test_the_file_chooser_offers_the_types_kb_reads():
    from kb.forms import UploadForm

    html = str(UploadForm()["files"])
    for suffix in (".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt", ".zip"):
        assert suffix in html
    assert 'accept="' in html and ".exe" not in html


# Upload progress ------------------------------------------------------------------------------


def _batch(collection, *names):
    batch = batch_create(user=system_user(), collection=collection, label=f"{len(names)} files")
    for name in names:
        batch_add_file(user=system_user(), batch=batch, file=io.BytesIO(f"# {name}\n\nText.".encode()), name=name,
                       enqueue=False)  # fmt: skip
    return batch


def test_each_upload_row_shows_its_own_state_not_the_batch_counter(client):
    editor = make_user("ed")
    collection = make_collection(editor=[editor])
    batch = _batch(collection, "a.md", "b.md", "c.md", "d.md")
    a, b, c, d = Document.objects.filter(batch=batch).order_by("source_path")
    document_mark(document_id=a.pk, status=Document.Status.PROCESSING, stage="parsing")
    # b and c share one embedding pass: both carry its counter, 7 of 40.
    for doc in (b, c):
        document_mark(document_id=doc.pk, status=Document.Status.PROCESSING, stage="embedding", done=7, total=40)
    document_mark(document_id=d.pk, status=Document.Status.FAILED, error="No text could be extracted.")
    client.force_login(editor)
    html = client.get(reverse("collection_detail", args=[collection.pk]), {"part": "batches"},
                      headers={"HX-Request": "true"}).content.decode()  # fmt: skip
    rows = html.split('class="batch-documents"')[1].split("</ul>")[0]
    assert ">Reading<" in rows and rows.count(">Embedding<") == 2 and "No text could be extracted." in rows
    assert "7/40" not in rows and "7 of 40" not in rows
    assert "0 of 4 ready, 1 failed, 2 embedding, 1 reading" in html


def test_the_time_left_waits_for_a_rate_and_counts_from_the_first_start():
    counts = {"total": 10, "queued": 6, "processing": 1, "ready": 3, "failed": 0, "cancelled": 0,
              "embedding": 1, "done": 1, "of": 2}  # fmt: skip
    now = timezone.now()
    assert _progress({**counts, "started": None}, now=now).eta_seconds is None  # nothing started yet
    early = {**counts, "ready": 1, "queued": 8, "started": now - timedelta(seconds=2)}
    assert _progress(early, now=now).eta_text == ""  # one document in two seconds is no rate
    steady = _progress({**counts, "started": now - timedelta(seconds=70)}, now=now)
    assert steady.fraction == pytest.approx(0.35) and steady.eta_text == "about 3 min left"  # 130 s, rounded up


def test_the_time_left_is_rounded_so_it_does_not_flicker():
    def text(seconds):
        return BatchProgress(1, 0, 1, 0, 0, 0, 0.5, seconds).eta_text

    assert [text(s) for s in (3, 41, 44, 61, 599, 601, 3700)] == [
        "about 5 s left", "about 45 s left", "about 45 s left", "about 2 min left", "about 10 min left",
        "about 15 min left", "about 1 h 05 min left",
    ]  # fmt: skip


def test_deleted_documents_leave_the_batch_counts(client):
    from kb.services.documents import document_delete

    collection = make_collection()
    batch = _batch(collection, "a.md", "b.md")
    document_delete(user=system_user(), document=Document.objects.get(batch=batch, source_path="a.md"))
    [shown] = selectors.batch_overview(user=system_user(), collection=collection)
    assert shown.progress.total == 1 and [d.source_path for d in shown.rows] == ["b.md"]


def test_a_search_pushes_a_clean_address_and_the_poll_pushes_none(client, wiki):
    client.force_login(wiki["viewer"])
    url = reverse("collection_detail", args=[wiki["collection"].pk])
    params = {"q": "back", "status": "", "folder": "ops"}
    searched = client.get(url, params, headers={"HX-Request": "true", "HX-Target": "documents"})
    assert searched["HX-Push-Url"] == f"{url}?q=back&folder=ops"
    polled = client.get(
        url, params, headers={"HX-Request": "true", "HX-Target": "documents", "HX-Trigger": "documents"}
    )
    assert "HX-Push-Url" not in polled
