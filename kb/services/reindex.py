"""Re-indexing: a collection's documents embedded again with the configured model, then switched in at once."""

from __future__ import annotations

from django.db import transaction

from ingestion import processing, queue, store
from ingestion.spec import configured_spec
from kb import access, vector_indexes
from kb.audit import audit_record
from kb.models import Chunk, Collection


def collection_reindex(*, user, collection: Collection, inline: bool = False, progress=None) -> int:
    """Embed every document of the collection again with the configured model, of any size.

    The new chunks are written beside the ones in use, under a new generation that search
    ignores; when the last document is done, collection_reindex_finish switches the
    collection to the new model in one transaction. Until then questions are answered
    from the old vectors with the old model. Running it again while a re-index of the same
    model is under way resumes it (documents done are not embedded twice); with another
    model configured meanwhile it starts over with that one. Returns the number of
    documents queued (or, inline, processed).
    """
    if not access.can_edit(user, collection):
        raise PermissionError("You cannot re-index this collection.")
    spec = configured_spec()
    vector_indexes.check_dim(spec.dim)
    # Built before the first new vector arrives, and concurrently when not inside a
    # transaction: searches and ingestion go on while it is made.
    vector_indexes.ensure(spec.dim)
    with transaction.atomic():
        collection = Collection.objects.select_for_update().get(pk=collection.pk)
        previous = collection.reindex_spec
        if previous != spec:
            if previous is not None:
                # Another model was configured meanwhile: what the earlier run staged is of no use.
                Chunk.objects.filter(collection=collection, generation=collection.reindex_generation).delete()
            collection.reindex_model = spec.as_json()
            collection.reindex_generation = store.next_generation()
            collection.save(update_fields=["reindex_model", "reindex_generation"])
        ids = list(store.documents_to_reindex(collection))
        audit_record(
            actor=user, action="collection.reindex", collection=collection, target=collection.name,
            documents=len(ids), model=spec.as_json(), previous_model=collection.embed_model,
            resumed=previous == spec,
        )  # fmt: skip
    for n, document_id in enumerate(ids, start=1):
        if inline:
            processing.document_process(document_id=document_id, reindex=True)
        else:
            queue.reindex(document_id, after_commit=False)  # the re-index state committed above
        if progress is not None:
            progress(n, len(ids))
    # Nothing (left) to embed, e.g. an empty collection: switch now.
    store.collection_reindex_finish(collection_id=collection.pk)
    return len(ids)
