import pytest
from django.urls import reverse

from kb.models import Conversation, Message
from tests.corpus import BACKUPS
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(client):
    viewer, stranger = make_user("viewer"), make_user("stranger")
    collection = make_collection("ops", viewer=[viewer])
    document = add_document(collection, "backups.md", BACKUPS)
    return {"viewer": viewer, "stranger": stranger, "collection": collection, "document": document}


def test_pages_need_sign_in(client, setup):
    response = client.get(reverse("collection_detail", args=[setup["collection"].pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(
    "name, key",
    [("collection_detail", "collection"), ("document_detail", "document"), ("document_download", "document")],
)
def test_no_grant_gets_404_not_403(client, setup, name, key):
    client.force_login(setup["stranger"])
    assert client.get(reverse(name, args=[setup[key].pk])).status_code == 404
    client.force_login(setup["viewer"])
    assert client.get(reverse(name, args=[setup[key].pk])).status_code == 200


def test_passage_link_of_unreadable_chunk_is_404(client, setup):
    chunk = setup["document"].chunks.first()
    client.force_login(setup["stranger"])
    assert client.get(reverse("chunk_detail", args=[chunk.pk])).status_code == 404


def test_citation_opens_document_with_the_passage_highlighted(client, setup):
    chunk = setup["document"].chunks.get(heading_path__endswith="Restore")
    client.force_login(setup["viewer"])
    response = client.get(reverse("chunk_detail", args=[chunk.pk]), follow=True)
    html = response.content.decode()
    assert f'id="chunk-{chunk.pk}" class="passage passage-hit"' in html
    assert html.count("passage-hit") == 1


def test_viewer_cannot_upload(client, setup):
    client.force_login(setup["viewer"])
    response = client.post(reverse("document_upload", args=[setup["collection"].pk]), {"files": [_file("x.md", "# x")]})
    assert response.status_code == 404


def test_htmx_collection_request_renders_only_the_documents_partial(client, setup):
    client.force_login(setup["viewer"])
    url = reverse("collection_detail", args=[setup["collection"].pk])
    full = client.get(url).content.decode()
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" in full and 'id="documents"' in full
    assert "<html" not in partial and partial.lstrip().startswith('<section id="documents"')
    assert "backups.md" in partial


def test_document_status_polling_stops_when_ready(client, setup):
    client.force_login(setup["viewer"])
    url = reverse("document_detail", args=[setup["document"].pk]) + "?part=status"
    response = client.get(url, headers={"HX-Request": "true"})
    assert response.status_code == 286


def test_ask_creates_a_conversation_with_sources_from_the_collection(client, setup):
    client.force_login(setup["viewer"])
    response = client.post(
        reverse("collection_ask", args=[setup["collection"].pk]), {"question": "When does the backup run?"}
    )
    conversation = Conversation.objects.get(user=setup["viewer"])
    assert response.status_code == 302 and response["Location"] == conversation.get_absolute_url()
    message = conversation.messages.get()
    assert message.status == Message.Status.PENDING
    assert message.sources and message.sources[0]["source"] == "backups.md"
    page = client.get(conversation.get_absolute_url()).content.decode()
    assert reverse("message_stream", args=[message.pk]) in page


@pytest.mark.parametrize("url_name", ["collection_ask", "ask"])
def test_a_first_question_under_htmx_gets_its_conversation_page_in_the_same_response(client, setup, url_name):
    client.force_login(setup["viewer"])
    args = [setup["collection"].pk] if url_name == "collection_ask" else []
    response = client.post(
        reverse(url_name, args=args), {"question": "When does the backup run?"}, headers={"HX-Request": "true"}
    )
    conversation = Conversation.objects.get(user=setup["viewer"])
    message = conversation.messages.get()
    assert response.status_code == 200
    assert response["HX-Push-Url"] == conversation.get_absolute_url()
    assert response["HX-Retarget"] == "body" and response["HX-Reswap"] == "innerHTML"
    page = response.content.decode()
    assert reverse("message_stream", args=[message.pk]) in page  # the stream starts without another request
    assert reverse("conversation_ask", args=[conversation.pk]) in page


def test_conversation_of_another_user_is_404(client, setup):
    client.force_login(setup["viewer"])
    client.post(reverse("collection_ask", args=[setup["collection"].pk]), {"question": "backup?"})
    conversation = Conversation.objects.get(user=setup["viewer"])
    client.force_login(setup["stranger"])
    assert client.get(conversation.get_absolute_url()).status_code == 404
    message = conversation.messages.get()
    assert client.get(reverse("message_stream", args=[message.pk])).status_code == 404


def _file(name, content):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content.encode())


def test_reading_a_document_shows_overlapping_text_once(client, setup):
    long = "# Guide\n\n" + " ".join(f"Sentence number {i} explains one more step of the guide." for i in range(120))
    document = add_document(setup["collection"], "guide.md", long)
    chunks = list(document.chunks.order_by("ordinal"))
    assert len(chunks) > 2 and chunks[1].start_char < chunks[0].end_char, "chunks should overlap"
    client.force_login(setup["viewer"])
    html = client.get(reverse("document_detail", args=[document.pk])).content.decode()
    for i in range(120):
        assert html.count(f"Sentence number {i} explains") == 1
    cited = chunks[1]
    html = client.get(reverse("chunk_detail", args=[cited.pk]), follow=True).content.decode()
    assert cited.text[:60] in html  # the cited passage is shown whole, overlap included


def test_duplicate_collection_name_is_refused_with_the_reason(client):
    admin = make_user(is_staff=True)
    make_collection("Handbook")
    client.force_login(admin)
    response = client.post(reverse("collection_create"), {"name": "handbook"})
    assert response.status_code == 400
    assert "already exists" in response.content.decode()


def test_only_admins_can_create_collections(client):
    client.force_login(make_user())
    assert client.post(reverse("collection_create"), {"name": "Mine"}).status_code == 404


def test_a_refused_question_under_htmx_is_swapped_into_the_error_line(client, setup):
    client.force_login(setup["viewer"])
    url = reverse("collection_ask", args=[setup["collection"].pk])
    response = client.post(url, {"question": "   "}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#ask-error" and response["HX-Reswap"] == "innerHTML"
    assert not Conversation.objects.exists()
    assert client.post(url, {"question": ""}).status_code == 400


def test_an_upload_with_a_bad_file_reports_it_and_keeps_the_good_one(client, setup):
    editor = make_user("editor")
    collection = make_collection("docs", editor=[editor])
    client.force_login(editor)
    response = client.post(
        reverse("document_upload", args=[collection.pk]),
        {"files": [_file("empty.md", ""), _file("good.md", "# Good\n\nText.")]},
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<section id="batches"')
    assert "kb:documents-changed" in response["HX-Trigger"]  # the documents table refreshes itself
    assert "empty.md is empty" in html
    assert list(collection.documents.values_list("source_path", flat=True)) == ["good.md"]
