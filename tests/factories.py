"""Small factories for the tests: plain functions over the services, no extra library."""

from __future__ import annotations

import io
import itertools

from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile

from ingestion.processing import document_process
from kb.access import system_user
from kb.models import Collection, Message, Role
from kb.services.collections import collection_create, collection_grant
from kb.services.conversations import message_ask
from kb.services.documents import document_upload
from tests.corpus import BACKUPS

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
    collection = collection_create(user=owner, name=name or f"collection{next(_seq)}")
    for role, principals in grants.items():
        for principal in principals:
            key = "group" if isinstance(principal, Group) else "user"
            collection_grant(actor=owner, collection=collection, role=Role(role), **{key: principal})
    return collection


def upload(name: str, content: str | bytes) -> SimpleUploadedFile:
    data = content.encode() if isinstance(content, str) else content
    return SimpleUploadedFile(name, data)


def upload_document(collection: Collection, name: str, content: str, **kwargs):
    """Upload text as a document without queuing it: the test processes it (or not)."""
    return document_upload(
        user=kwargs.pop("user", system_user()), collection=collection, file=io.BytesIO(content.encode()),
        source_path=name, enqueue=False, **kwargs,
    )  # fmt: skip


def add_document(collection: Collection, name: str, content: str, *, user=None, process: bool = True):
    """Upload a document and (by default) process it inline, as a worker would."""

    outcome = document_upload(
        user=user or system_user(), collection=collection, file=io.BytesIO(content.encode()),
        source_path=name, enqueue=False,
    )  # fmt: skip
    if process and outcome.outcome != "unchanged":
        document_process(document_id=outcome.document.pk)
    outcome.document.refresh_from_db()
    return outcome.document


def ask(question: str = "When does the backup run?"):
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = message_ask(user=user, question=question, collections=[collection])
    assert message.status == Message.Status.PENDING
    return user, message


PASSWORD = "pw-for-tests-1"
