"""The audit log's one writer: who did what to which collection.

Called inside the transaction of the service that acts, so the record and the change
commit together. It sits below the services (and below ingestion's storage, which records
a re-index's switch), and decides nothing: permissions are kb.access's.
"""

from __future__ import annotations

from kb.models import AuditEvent, Collection


def audit_record(*, actor, action: str, collection: Collection | None = None, target: str = "", **detail) -> AuditEvent:
    """Record who did what to which collection; call it inside the service's transaction."""
    known = actor if getattr(actor, "is_authenticated", False) and getattr(actor, "pk", None) else None
    return AuditEvent.objects.create(
        actor=known,
        actor_name=known.get_username() if known else "",
        action=action,
        collection=collection if collection is not None and collection.pk else None,
        collection_name=collection.name if collection is not None else "",
        target=str(target)[:1000],
        detail=detail,
    )
