"""Small factories for the tests: plain functions over the services, no extra library."""

from __future__ import annotations

import io
import itertools

from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile

from kb import services
from kb.models import Collection, Role

_seq = itertools.count(1)


def make_user(username: str | None = None, *, password: str = "pw-for-tests-1", **extra) -> User:
    username = username or f"user{next(_seq)}"
    return User.objects.create_user(username=username, password=password, **extra)


def make_group(name: str | None = None, *members: User) -> Group:
    group = Group.objects.create(name=name or f"group{next(_seq)}")
    for member in members:
        member.groups.add(group)
    return group


def make_collection(name: str | None = None, *, owner: User | None = None, **grants: list) -> Collection:
    owner = owner or make_user(is_staff=True)
    collection = services.collection_create(user=owner, name=name or f"collection{next(_seq)}")
    for role, principals in grants.items():
        for principal in principals:
            key = "group" if isinstance(principal, Group) else "user"
            services.collection_grant(collection=collection, role=Role(role), **{key: principal})
    return collection


def upload(name: str, content: str | bytes) -> SimpleUploadedFile:
    data = content.encode() if isinstance(content, str) else content
    return SimpleUploadedFile(name, data)


def add_document(collection: Collection, name: str, content: str, *, user=None, process: bool = True):
    """Upload a document and (by default) process it inline, as a worker would."""
    from kb.access import system_user

    outcome = services.document_upload(
        user=user or system_user(), collection=collection, file=io.BytesIO(content.encode()),
        source_path=name, enqueue=False,
    )  # fmt: skip
    if process and outcome.outcome != "unchanged":
        services.document_process(document_id=outcome.document.pk)
    outcome.document.refresh_from_db()
    return outcome.document


PASSWORD = "pw-for-tests-1"
