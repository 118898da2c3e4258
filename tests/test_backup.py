"""kb_export and kb_import: a whole knowledge base out to one archive and back, all or nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from kb import retrieval, vector_indexes
from kb.access import system_user
from kb.models import GENERATION_SEQUENCE, Chunk, Document, KeywordTerm, KeywordTotal, Message, SourceRun
from kb.services.backup import BACKED_UP, SKIPPED, BackupError, backup_export, backup_import
from kb.services.conversations import feedback_give, message_ask, message_finish
from kb.services.documents import batch_create
from kb.services.sources import source_add
from kb.services.tokens import api_token_create
from tests.corpus import BACKUPS, VACATION
from tests.factories import PASSWORD, add_document, make_collection, make_group, make_user, upload_document
from tests.helpers import ROOT

pytestmark = pytest.mark.django_db

QUESTION = "When does the database backup run?"


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    """Uploads of this test alone, so "the files are gone again" can be checked."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def rows() -> dict[str, list[dict]]:
    """Every backed-up row, every column (generated ones and vectors included), and every many-to-many pair."""
    state = {}
    for label, _ in BACKED_UP:
        model = apps.get_model(label)
        state[label] = list(model._base_manager.order_by("pk").values())
        for m2m in model._meta.local_many_to_many:
            through = m2m.remote_field.through
            pairs = through.objects.values_list(m2m.m2m_field_name(), m2m.m2m_reverse_name())
            state[f"{label}.{m2m.name}"] = sorted(pairs)
    state["bm25"] = [sorted(KeywordTerm.objects.values_list()), sorted(KeywordTotal.objects.values_list())]
    return state


def files(media: Path) -> dict[str, bytes]:
    return {str(p.relative_to(media)): p.read_bytes() for p in media.rglob("*") if p.is_file()}


def flush(media: Path) -> None:
    """Empty every backed-up table and the uploads folder, and start the sequences again: the
    state of a new, migrated installation."""
    with connection.cursor() as cursor:
        for label, _ in reversed(BACKED_UP):
            model = apps.get_model(label)
            model._base_manager.all().delete()
            cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), 1, false)", [model._meta.db_table])
        cursor.execute(f"ALTER SEQUENCE {GENERATION_SEQUENCE} RESTART")
    for path in files(media):
        (media / path).unlink()


def counts() -> dict[str, int]:
    return {label: apps.get_model(label)._base_manager.count() for label, _ in BACKED_UP}


def hits(username: str, question: str = QUESTION) -> list[int]:
    from django.contrib.auth.models import User

    return [hit.chunk.pk for hit in retrieval.search(user=User.objects.get(username=username), query=question).hits]


def signs_in(username: str) -> bool:
    response = Client().post(reverse("login"), {"username": username, "password": PASSWORD})
    return response.status_code == 302 and response.wsgi_request.user.is_authenticated


def knowledge_base() -> None:
    """Users, a group, grants of every role, ingested documents, a queued one, a source with
    credentials and a run, a cited answer with feedback, a token, audit events, an admin log entry."""
    owner = make_user("owner", is_staff=True)
    reader = make_user("reader")
    editor = make_user("editor")
    staff = make_group("staff", reader)
    ops = make_collection("ops", owner=owner, viewer=[staff], editor=[editor])
    hr = make_collection("hr", owner=owner, viewer=[reader])
    add_document(ops, "runbooks/backups.md", BACKUPS)
    add_document(hr, "vacation.md", VACATION)
    batch = batch_create(user=owner, collection=ops, label="1 file")
    upload_document(ops, "later.md", "# Later\n\nNot processed yet.", batch=batch)
    source = source_add(
        user=owner, collection=ops, kind="web", location="https://wiki.example.com/", name="wiki",
        secret={"username": "bot", "token": "s3cret"}, sync=False,
    )  # fmt: skip
    SourceRun.objects.create(source=source, status=SourceRun.Status.DONE, summary={"created": 0})
    message, _ = message_ask(user=reader, question=QUESTION, collections=[ops, hr])
    assert message.sources and message.sources[0]["source"] == "runbooks/backups.md"
    message_finish(message=message, answer="It runs nightly at 02:00 [1].", status="complete", sources=message.sources)
    feedback_give(user=reader, message=message, rating=1, comment="right")
    api_token_create(user=reader, name="laptop")
    LogEntry.objects.create(
        user=owner, content_type=ContentType.objects.get_for_model(ops), object_id=str(ops.pk),
        object_repr=ops.name, action_flag=ADDITION,
    )  # fmt: skip


def small_kb(tmp_path: Path) -> Path:
    """Two uploaded (unprocessed) documents, exported, then the database and uploads emptied."""
    owner = make_user("owner")
    collection = make_collection("ops", owner=owner)
    upload_document(collection, "a.md", "# A\n\nFirst.")
    upload_document(collection, "b.md", "# B\n\nSecond.")
    archive = tmp_path / "kb.tar"
    backup_export(actor=system_user(), path=archive)
    flush(Path(django_settings.MEDIA_ROOT))
    return archive


def rewrite(archive: Path, *, drop: str | None = None, change: dict | None = None, manifest=None) -> Path:
    """A copy of the archive without a member, with a member's bytes replaced, or with its manifest edited."""
    out = archive.with_name("edited.tar")
    with tarfile.open(archive) as source, tarfile.open(out, "w") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == drop:
                continue
            if member.name == "manifest.json" and manifest:
                data = json.dumps(manifest(json.loads(data))).encode()
            data = (change or {}).get(member.name, data)
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out


def kb_import(path: Path) -> str:
    out = io.StringIO()
    call_command("kb_import", str(path), stdout=out)
    return out.getvalue()


# --- the round trip -------------------------------------------------------------------------


def test_every_model_is_backed_up_or_left_out_on_purpose():
    labels = {model._meta.label_lower for model in apps.get_models()}
    assert labels == {label for label, _ in BACKED_UP} | set(SKIPPED)


def test_an_exported_knowledge_base_imports_back_identical_and_usable(media, tmp_path):
    knowledge_base()
    before, uploads = rows(), files(media)
    answers_before = hits("reader")
    assert Chunk.objects.count() >= 4 and len(uploads) == 3 and answers_before
    assert Document.objects.filter(status=Document.Status.QUEUED).count() == 1

    out = io.StringIO()
    call_command("kb_export", str(tmp_path / "kb.tar"), stdout=out)
    assert "Wrote" in out.getvalue() and "3 files" in out.getvalue()
    flush(media)
    assert not any(counts().values()) and not files(media)

    assert "3 files" in kb_import(tmp_path / "kb.tar")
    after = rows()
    for label in before:  # model by model, for a readable failure
        assert after[label] == before[label], label
    assert files(media) == uploads
    cited = Message.objects.get().sources[0]["chunk_id"]
    assert Chunk.objects.get(pk=cited).embedding == next(r for r in before["kb.chunk"] if r["id"] == cited)["embedding"]
    assert signs_in("reader") and signs_in("owner")
    assert hits("reader") == answers_before
    assert vector_indexes.state(Chunk.objects.values_list("embedding_dim", flat=True)[0]) == "valid"
    # New rows continue after the loaded ids (sequences reset), generations after the loaded ones.
    newer = make_collection("new", owner=make_user("later"))
    assert newer.pk > max(r["id"] for r in before["kb.collection"])
    newer.refresh_from_db()
    assert newer.embed_generation > max(r["embed_generation"] for r in before["kb.collection"])


def test_the_archive_holds_a_manifest_the_rows_and_the_files(tmp_path):
    archive = small_kb(tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert names[0] == "manifest.json"
    assert [n for n in names if n.startswith("data/")] == [f"data/{label}.jsonl" for label, _ in BACKED_UP]
    assert len([n for n in names if n.startswith("uploads/documents/")]) == 2
    assert manifest["kb_version"] and manifest["created_at"]
    assert manifest["migrations"]["kb"][-1] == max(manifest["migrations"]["kb"])
    assert {m["model"]: m["count"] for m in manifest["models"]}["kb.document"] == 2


def test_a_compressed_archive_round_trips_too(tmp_path, media):
    owner = make_user("owner")
    upload_document(make_collection("ops", owner=owner), "a.md", "# A\n\nFirst.")
    before, uploads = rows(), files(media)
    backup_export(actor=owner, path=tmp_path / "kb.tar.gz")
    with open(tmp_path / "kb.tar.gz", "rb") as archive:
        assert archive.read(2) == b"\x1f\x8b"  # gzip
    flush(media)
    backup_import(path=tmp_path / "kb.tar.gz")
    assert rows() == before and files(media) == uploads


# --- refusals -------------------------------------------------------------------------------


def test_importing_into_a_database_with_kb_data_is_refused_and_says_what_to_do(tmp_path):
    archive = small_kb(tmp_path)
    make_user("someone")
    with pytest.raises(CommandError, match=r"already holds kb data \(1 auth.user\).*run `python manage.py migrate`"):
        kb_import(archive)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "nowhere.tar", "There is no archive at"),
        (lambda p: p, "is a folder"),
        (lambda p: (p / "x.tar").write_bytes(b"not a tar at all" * 100) and p / "x.tar", "is not a kb archive"),
    ],
    ids=["missing", "folder", "not-a-tar"],
)
def test_a_path_that_is_no_archive_is_one_line(tmp_path, setup, message):
    with pytest.raises(CommandError, match=message) as caught:
        kb_import(setup(tmp_path))
    assert "\n" not in str(caught.value)


def test_a_damaged_manifest_or_a_cut_archive_is_refused(tmp_path):
    archive = small_kb(tmp_path)
    with pytest.raises(CommandError, match="manifest of .* is damaged"):
        kb_import(rewrite(archive, change={"manifest.json": b"{not json"}))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CommandError, match="damaged"):
        kb_import(cut)
    assert not any(counts().values())


def test_a_damaged_row_names_its_file_and_line(tmp_path):
    archive = small_kb(tmp_path)
    with tarfile.open(archive) as tar:
        lines = tar.extractfile("data/kb.document.jsonl").read().splitlines()
    damaged = b"\n".join([lines[0], b'{"model": "kb.document", "pk": 9, "fields": {"size": "many"}}']) + b"\n"
    with pytest.raises(CommandError, match=r"data/kb.document.jsonl line 2 cannot be read"):
        kb_import(rewrite(archive, change={"data/kb.document.jsonl": damaged}))
    assert not any(counts().values())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["migrations"]["kb"].pop(), r"migrate kb 00\d\d_\w+`"),
        (lambda m: m["migrations"]["kb"].append("0999_future"), "install that kb version"),
    ],
    ids=["older", "newer"],
)
def test_an_archive_at_other_migrations_is_refused_with_the_command_to_run(tmp_path, edit, message):
    archive = small_kb(tmp_path)

    def edited(manifest: dict) -> dict:
        edit(manifest)
        return manifest

    with pytest.raises(CommandError, match=message):
        kb_import(rewrite(archive, manifest=edited))


def test_a_missing_file_fails_the_whole_import_and_removes_the_files_already_written(tmp_path, media):
    archive = small_kb(tmp_path)
    with tarfile.open(archive) as tar:
        last = tar.getnames()[-1]
    assert last.startswith("uploads/")  # the other document's file is written before the gap is found
    with pytest.raises(CommandError, match=r"lacks the uploaded file documents/\w+\.md of the document '(a|b).md'"):
        kb_import(rewrite(archive, drop=last))
    assert not any(counts().values())
    assert not files(media)


def test_a_file_with_changed_bytes_is_refused(tmp_path, media):
    archive = small_kb(tmp_path)
    with tarfile.open(archive) as tar:
        first = next(n for n in tar.getnames() if n.startswith("uploads/"))
    with pytest.raises(CommandError, match="is damaged: its bytes changed"):
        kb_import(rewrite(archive, change={first: b"# A\n\nTampered."}))
    assert not files(media) and not any(counts().values())


def test_credentials_need_the_exporting_key(tmp_path, settings):
    owner = make_user("owner")
    collection = make_collection("ops", owner=owner)
    source_add(
        user=owner, collection=collection, kind="web", location="https://wiki.example.com/", name="wiki",
        secret={"token": "s3cret"}, sync=False,
    )  # fmt: skip
    archive = tmp_path / "kb.tar"
    backup_export(actor=system_user(), path=archive)
    flush(Path(settings.MEDIA_ROOT))
    settings.KB_CREDENTIALS_KEY = [Fernet.generate_key().decode()]
    with pytest.raises(BackupError, match="credentials of the source 'wiki' cannot be decrypted"):
        backup_import(path=archive)
    assert not any(counts().values())


def test_a_file_already_missing_at_export_is_named_and_does_not_block_the_restore(tmp_path, media):
    collection = make_collection("ops", owner=make_user("owner"))
    lost = upload_document(collection, "a.md", "# A\n\nFirst.").document
    upload_document(collection, "b.md", "# B\n\nSecond.")
    (media / lost.file.name).unlink()
    err = io.StringIO()
    call_command("kb_export", str(tmp_path / "kb.tar"), stdout=io.StringIO(), stderr=err)
    assert f"the uploaded file {lost.file.name} is missing" in err.getvalue()
    flush(media)
    assert "already missing when the archive was made" in kb_import(tmp_path / "kb.tar")
    assert Document.objects.count() == 2 and list(files(media)) == [Document.objects.get(source_path="b.md").file.name]


def test_export_never_overwrites(tmp_path):
    (tmp_path / "kb.tar").write_bytes(b"precious")
    with pytest.raises(CommandError, match="already exists"):
        call_command("kb_export", str(tmp_path / "kb.tar"))
    assert (tmp_path / "kb.tar").read_bytes() == b"precious"


# --- on the operator's terminal -------------------------------------------------------------


def manage(*args: str, database: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(KB_DB_NAME=database, KB_EMBEDDED_DB_KEEP="1")
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_bad_input_on_the_terminal_is_one_line_without_a_traceback(tmp_path):
    result = manage("kb_import", str(tmp_path / "nowhere.tar"), database=connection.settings_dict["NAME"])
    assert result.returncode == 1
    assert result.stderr.strip() == f"CommandError: There is no archive at {tmp_path / 'nowhere.tar'}."


def test_on_a_database_never_migrated_the_commands_say_to_migrate_first(tmp_path):
    for command in ("kb_export", "kb_import"):
        result = manage(command, str(tmp_path / "kb.tar"), database=f"{connection.settings_dict['NAME']}_unmigrated")
        assert result.returncode != 0 and "run `python manage.py migrate` first" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
