"""A whole knowledge base as one archive, and back: `kb_export PATH`, `kb_import PATH`.

The archive is a tar file (gzip-compressed when PATH ends in .gz or .tgz), written and read
front to back, so neither side holds more than one batch of rows in memory:

    manifest.json                 format, kb version, created at, migrations per app, rows per model
    data/<app>.<model>.jsonl      the rows, Django's own "jsonl" serialization, in loading order
    uploads/<stored name>         each document's uploaded file, byte for byte

Rows keep their primary keys, so every reference between them (a grant's user, a message's
cited chunk ids inside its JSON) stays true; users and groups refer to permissions by natural
key, because migrate numbers permissions and content types afresh in each database.
Sources' credentials travel encrypted: the importing installation needs the same
KB_CREDENTIALS_KEY (or, when that is unset, the same DJANGO_SECRET_KEY), which the import checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from importlib import metadata
from pathlib import Path

from django.apps import apps
from django.core import serializers
from django.core.exceptions import SuspiciousOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.management.color import no_style
from django.core.serializers.base import DeserializationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.db.models import Max

from kb import credentials, vector_indexes
from kb.audit import audit_record
from kb.models import GENERATION_SEQUENCE, Chunk, Collection, Document

FORMAT = "kb-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# What a backup holds, in loading order, and whether the model's rows name other rows by
# natural key (True for those that point at permissions and content types, which each
# database numbers for itself).
BACKED_UP: list[tuple[str, bool]] = [
    ("auth.group", True),
    ("auth.user", True),
    ("kb.collection", False),
    ("kb.collectiongrant", False),
    ("kb.uploadbatch", False),
    ("kb.source", False),
    ("kb.sourcerun", False),
    ("kb.document", False),
    ("kb.chunk", False),
    ("kb.conversation", False),
    ("kb.message", False),
    ("kb.feedback", False),
    ("kb.apitoken", False),
    ("kb.auditevent", False),
    ("admin.logentry", True),
]

# Left out on purpose; tests/test_backup.py fails when a new model is in neither list.
SKIPPED: dict[str, str] = {
    "contenttypes.contenttype": "made by migrate; rows refer to them by natural key",
    "auth.permission": "made by migrate; rows refer to them by natural key",
    "sessions.session": "sign-ins: people sign in again after a restore",
    "axes.accessattempt": "sign-in throttling counters, short-lived",
    "axes.accessattemptexpiration": "sign-in throttling counters, short-lived",
    "axes.accessfailurelog": "sign-in throttling records, short-lived",
    "axes.accesslog": "sign-in throttling records, short-lived",
    "kb.keywordterm": "BM25 statistics, rebuilt by kb_chunk's triggers as the chunks load",
    "kb.keywordtotal": "BM25 statistics, rebuilt by kb_chunk's triggers as the chunks load",
}

BATCH = 1000  # rows serialized per query, and chunks inserted per statement
_MIGRATE = "`python manage.py migrate`"


class BackupError(Exception):
    """An archive or a database kb cannot export to or import from, said in one line."""


@dataclass
class Summary:
    """What an export wrote or an import loaded."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    files: int = 0
    missing_files: list[str] = field(default_factory=list)
    bytes: int = 0


def _model(label: str):
    return apps.get_model(label)


def _kb_version() -> str:
    try:
        return metadata.version("kb")
    except metadata.PackageNotFoundError:
        return "unknown"


def _migration_state() -> dict[str, list[str]]:
    state: dict[str, list[str]] = {}
    for app, name in sorted(MigrationRecorder(connection).applied_migrations()):
        state.setdefault(app, []).append(name)
    return state


def _serialized_fields(model) -> list[str]:
    # Generated columns (a chunk's tsvector, its length, its vector's size) are left out:
    # Postgres computes them again from the columns they derive from, and refuses writes to them.
    local = [f.name for f in model._meta.local_fields if f.serialize and not f.generated]
    return local + [f.name for f in model._meta.local_many_to_many]


def _queryset(model):
    return model._base_manager.order_by("pk")


# --- export ---------------------------------------------------------------------------------


def backup_export(*, actor, path: Path) -> Summary:
    """Write the whole knowledge base to a new archive at `path` (never over an existing file)."""
    path = Path(path)
    if path.exists():
        raise BackupError(f"{path} already exists: kb_export writes a new file; choose another name.")
    if not path.parent.is_dir():
        raise BackupError(f"There is no folder {path.parent} to write {path.name} in.")
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    # Written beside its final name and renamed when complete: an interrupted export never
    # leaves a file that looks like a backup.
    partial = path.with_name(f".{path.name}.partial")
    try:
        with tarfile.open(partial, mode, format=tarfile.PAX_FORMAT) as tar:
            summary = _export_snapshot(tar, path)
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a folder kb may not write in
            raise BackupError(f"Cannot write {path}: {_first_line(exc)}") from exc
        raise
    summary.bytes = path.stat().st_size
    audit_record(actor=actor, action="backup.export", target=str(path), files=summary.files, counts=summary.counts)
    return summary


def _export_snapshot(tar: tarfile.TarFile, path: Path) -> Summary:
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            # One snapshot for every table, so rows written while the export runs are either
            # all in it or not at all (a chunk never without its document).
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        summary = Summary(path=path)
        summary.counts = {label: _queryset(_model(label)).count() for label, _ in BACKED_UP}
        files = _document_files()
        summary.missing_files = [name for name in files if not default_storage.exists(name)]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kb_version": _kb_version(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "migrations": _migration_state(),
            "models": [{"model": label, "count": summary.counts[label]} for label, _ in BACKED_UP],
            "missing_files": summary.missing_files,
        }
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
        for label, natural in BACKED_UP:
            _add_rows(tar, label, natural, summary.counts[label], path.parent)
        missing = set(summary.missing_files)
        for name in files:
            if name not in missing:
                _add_upload(tar, name)
                summary.files += 1
    return summary


def _document_files() -> list[str]:
    names = _queryset(Document).exclude(file="").values_list("file", flat=True).iterator(chunk_size=BATCH)
    return list(dict.fromkeys(names))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(datetime.now(UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


def _add_rows(tar: tarfile.TarFile, label: str, natural: bool, expected: int, scratch: Path) -> None:
    model = _model(label)
    # A tar member's size comes before its bytes, so the rows go to a scratch file first, one
    # model at a time (the largest, the chunks, sets the space needed beside the archive).
    with tempfile.TemporaryFile(dir=scratch) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        rows = _Counting(text)
        serializers.serialize(
            "jsonl", _queryset(model).iterator(chunk_size=BATCH), stream=rows,
            fields=_serialized_fields(model), use_natural_foreign_keys=natural, cls=_ExactJSONEncoder,
        )  # fmt: skip
        text.flush()
        data = text.detach()
        if rows.lines != expected:
            raise BackupError(f"{label} changed during the export ({expected} rows, then {rows.lines}); run it again.")
        info = tarfile.TarInfo(f"data/{label}.jsonl")
        info.size = data.tell()
        info.mtime = int(datetime.now(UTC).timestamp())
        data.seek(0)
        tar.addfile(info, data)


class _ExactJSONEncoder(DjangoJSONEncoder):
    """Django's encoder, but times keep their microseconds (it cuts them to milliseconds, as
    JavaScript would): a restore must give back the same timestamps, and messages their order."""

    def default(self, o):
        if isinstance(o, datetime | time):
            return o.isoformat()
        return super().default(o)


class _Counting:
    """A text stream that counts the lines written through it (one a row in jsonl)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return self.stream.write(text)


def _add_upload(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(f"uploads/{name}")
    info.mtime = int(datetime.now(UTC).timestamp())
    try:
        info.size = default_storage.size(name)
        with default_storage.open(name, "rb") as source:
            tar.addfile(info, source)
    except FileNotFoundError as exc:
        raise BackupError(f"The uploaded file {name} went while the export ran (a purge?): run it again.") from exc


# --- import ---------------------------------------------------------------------------------


def backup_import(*, path: Path) -> Summary:
    """Load an archive made by backup_export into this empty, migrated database, all or nothing.

    No actor: the database is empty, so there is no one to act as yet; shell access to the
    server is the permission, as for migrate.
    """
    path = Path(path)
    tar = _open(path)
    written: list[str] = []
    try:
        with tar:
            manifest = _read_manifest(tar, path)
            _check_migrations(manifest)
            _check_empty()
            with transaction.atomic():
                summary = _load(tar, manifest, path, written)
        return summary
    except BaseException as exc:
        for name in written:  # the rows went with the transaction; the files go here
            default_storage.delete(name)
        if isinstance(exc, BackupError):
            raise
        if isinstance(exc, tarfile.TarError | EOFError | zlib.error | OSError):
            raise BackupError(f"The archive {path} is damaged (cut short?): {_first_line(exc)}") from exc
        if isinstance(exc, DatabaseError | SuspiciousOperation):
            raise BackupError(f"The archive's rows could not be loaded: {_first_line(exc)}") from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _open(path: Path) -> tarfile.TarFile:
    if not path.exists():
        raise BackupError(f"There is no archive at {path}.")
    if path.is_dir():
        raise BackupError(f"{path} is a folder; kb_import reads the single file kb_export wrote.")
    try:
        return tarfile.open(path, "r:*")
    except PermissionError as exc:
        raise BackupError(f"kb may not read {path}: {_first_line(exc)}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{path} is not a kb archive (not a tar file kb_export wrote): {_first_line(exc)}") from exc


def _read_manifest(tar: tarfile.TarFile, path: Path) -> dict:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise BackupError(f"{path} is not a kb archive: it does not begin with {MANIFEST}.")
    try:
        manifest = json.loads(tar.extractfile(first).read())
        if manifest["format"] != FORMAT:
            raise ValueError(f"format {manifest['format']!r}")
        if manifest["format_version"] != FORMAT_VERSION:
            raise BackupError(
                f"{path} is a kb archive of format {manifest['format_version']}; this kb reads format "
                f"{FORMAT_VERSION}: import it with the kb version that made it ({manifest.get('kb_version')})."
            )
        models = {m["model"]: int(m["count"]) for m in manifest["models"]}
        migrations = {str(app): [str(n) for n in names] for app, names in manifest["migrations"].items()}
        missing = {str(name) for name in manifest.get("missing_files", [])}
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"The manifest of {path} is damaged ({_first_line(exc)}): not a usable kb archive.") from exc
    expected = [label for label, _ in BACKED_UP]
    if list(models) != expected:
        raise BackupError(
            f"{path} was made by kb {manifest.get('kb_version')}, which backs up other tables "
            f"({', '.join(sorted(set(models) ^ set(expected)))}): import it with that version."
        )
    return {**manifest, "models": models, "migrations": migrations, "missing_files": missing}


def _check_migrations(manifest: dict) -> None:
    """Refuse unless this database is at exactly the archive's migrations, and say how to get there."""
    here = _migration_state()
    there = manifest["migrations"]
    known = MigrationLoader(connection, ignore_no_migrations=True).disk_migrations
    if not here:
        raise BackupError(f"The database is not set up yet: run {_MIGRATE} first, then import again.")
    for app in sorted(set(here) | set(there)):
        if set(here.get(app, [])) == set(there.get(app, [])):
            continue
        target = max(there.get(app, []), default="zero")
        at = max(here.get(app, []), default="none")
        if target != "zero" and (app, target) not in known:
            raise BackupError(
                f"The archive was made by kb {manifest.get('kb_version')} at migration {app}.{target}, which this "
                f"kb ({_kb_version()}) does not have: install that kb version (or a later one), run {_MIGRATE}, "
                "then import again."
            )
        raise BackupError(
            f"This database is at migration {app}.{at}; the archive was made at {app}.{target}: run "
            f"`python manage.py migrate {app} {target}` on this empty database, then import again."
        )


def _check_empty() -> None:
    found = [f"{n} {label}" for label, _ in BACKED_UP if (n := _queryset(_model(label)).count())]
    if found:
        raise BackupError(
            f"This database already holds kb data ({', '.join(found)}): kb_import restores only into an empty one. "
            f"Create a new database, run {_MIGRATE} on it, point kb at it (DATABASE_URL or KB_DB_NAME) "
            "and import again."
        )


@dataclass(frozen=True)
class _Named:
    """What the import keeps of a document until its file arrives (not the row: there may be many)."""

    pk: int
    source_path: str
    content_hash: str


def _load(tar: tarfile.TarFile, manifest: dict, path: Path, written: list[str]) -> Summary:
    summary = Summary(path=path)
    files: dict[str, _Named] = {}  # stored name -> its document, as the rows name them
    loaded: set[str] = set()
    dims: set[int] = set()  # vector indexes dropped while the chunks load
    for member in tar:
        if member.name.startswith("data/") and member.isfile():
            label = member.name.removeprefix("data/").removesuffix(".jsonl")
            if label not in manifest["models"] or label in loaded:
                raise BackupError(f"The archive is damaged: {member.name} is not in its manifest, or is there twice.")
            if label == "kb.chunk":
                dims |= _drop_vector_indexes()
            count = _load_rows(tar.extractfile(member), label, files)
            if count != manifest["models"][label]:
                raise BackupError(
                    f"The archive is damaged: {member.name} holds {count} rows, its manifest says "
                    f"{manifest['models'][label]}."
                )
            summary.counts[label] = count
            loaded.add(label)
        elif member.name.startswith("uploads/") and member.isfile():
            name = member.name.removeprefix("uploads/")
            document = files.pop(name, None)
            if document is not None:  # a file no document names is not restored
                _restore_file(tar.extractfile(member), name, document, written)
                summary.files += 1
    absent = [label for label in manifest["models"] if label not in loaded]
    if absent:
        raise BackupError(f"The archive is damaged: it lacks data/{absent[0]}.jsonl, which its manifest names.")
    lost = [(name, doc) for name, doc in files.items() if name not in manifest["missing_files"]]
    if lost:
        name, document = lost[0]
        raise BackupError(
            f"The archive lacks the uploaded file {name} of the document {document.source_path!r} "
            f"(id {document.pk}){f' and {len(lost) - 1} more' if len(lost) > 1 else ''}: nothing was imported."
        )
    summary.missing_files = sorted(files)
    _after_load(dims)
    return summary


def _load_rows(stream, label: str, files: dict[str, _Named]) -> int:
    model = _model(label)
    lines = _Lines(stream)
    # Chunks, by far the most rows, go in batches. bulk_create would stamp auto_now fields
    # with the time of the import, so the other models are saved row by row as loaddata does
    # (raw: the stored timestamps kept); they have no more rows than people make by hand.
    bulk = not model._meta.local_many_to_many and not any(
        getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False) for f in model._meta.local_fields
    )
    batch = []
    count = 0
    try:
        for item in serializers.deserialize("jsonl", lines, handle_forward_references=False):
            if type(item.object) is not model:
                raise BackupError(f"The archive is damaged: data/{label}.jsonl line {lines.number} is not a {label}.")
            count += 1
            if label == "kb.source":
                _check_credentials(item.object)
            if label == "kb.document" and item.object.file.name:
                document = item.object
                files[document.file.name] = _Named(document.pk, document.source_path, document.content_hash)
            if bulk:
                batch.append(item.object)
                if len(batch) >= BATCH:
                    model._base_manager.bulk_create(batch)
                    batch = []
            else:
                item.save(force_insert=True)
        if batch:
            model._base_manager.bulk_create(batch)
    except DeserializationError as exc:
        raise BackupError(
            f"The archive is damaged: data/{label}.jsonl line {lines.number} cannot be read ({_first_line(exc)})."
        ) from exc
    return count


class _Lines:
    """The lines of a member, numbered, for saying where a damaged one is."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.number = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.number += 1
            yield line


def _check_credentials(source) -> None:
    try:
        credentials.decrypt(source.credentials)
    except credentials.CredentialsUnreadable as exc:
        raise BackupError(
            f"The credentials of the source {source.name!r} cannot be decrypted here: set KB_CREDENTIALS_KEY "
            "(or, where it was unset, DJANGO_SECRET_KEY) to the exporting installation's value and import again."
        ) from exc


def _restore_file(stream, name: str, document: _Named, written: list[str]) -> None:
    if _sha256(stream) != document.content_hash:
        raise BackupError(f"The archive's copy of {name} (document id {document.pk}) is damaged: its bytes changed.")
    stream.seek(0)
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as present:
            if _sha256(present) == document.content_hash:
                return  # already there, the same bytes
        raise BackupError(
            f"The uploads folder already holds a different {name}: import with KB_MEDIA_ROOT set to an empty folder."
        )
    try:
        stored = default_storage.save(name, File(stream, name=name))
    except OSError as exc:  # a full disk, a read-only folder: not the archive's fault
        default_storage.delete(name)  # what a write cut short left (it was not there before)
        raise BackupError(f"Cannot write {name} to the uploads folder: {_first_line(exc)}") from exc
    written.append(stored)
    if stored != name:
        raise BackupError(f"The uploads folder stored {name} as {stored}: import into an empty KB_MEDIA_ROOT.")


def _sha256(stream) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _drop_vector_indexes() -> set[int]:
    """Drop the chunks' HNSW indexes until the chunks are in; the sizes they were for.

    Inserting into an HNSW index row by row is far slower than building it once over all the
    rows: 20,000 chunks of 384 dimensions imported in 138 s with the index in place, in 59 s
    with it dropped and built afterwards (2 shared cores, kb_import from start to end).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE i.indrelid = %s::regclass AND c.relname LIKE %s",
            [vector_indexes.TABLE, vector_indexes.index_name(0).removesuffix("0") + "%"],
        )
        names = [row[0] for row in cursor.fetchall()]
        for name in names:
            cursor.execute(f'DROP INDEX "{name}"')
    return {int(name.rsplit("_", 1)[1]) for name in names}


def _after_load(dims: set[int]) -> None:
    """Sequences past the loaded ids, vector indexes for the sizes loaded, and the rows' references checked."""
    models = [_model(label) for label, _ in BACKED_UP]
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), models):
            cursor.execute(sql)
        # Embedding generations come from a sequence of their own: new ones must not reuse a loaded one.
        generations = [
            Collection.objects.aggregate(m=Max("embed_generation"))["m"],
            Collection.objects.aggregate(m=Max("reindex_generation"))["m"],
            Chunk.objects.aggregate(m=Max("generation"))["m"],
        ]
        highest = max((g for g in generations if g is not None), default=None)
        if highest is not None:
            cursor.execute("SELECT setval(%s, %s)", [GENERATION_SEQUENCE, highest])
        # Foreign keys are checked at commit; checking them now makes a broken reference
        # this transaction's error, which the caller turns into one line.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    dims |= set(Chunk.objects.order_by().values_list("embedding_dim", flat=True).distinct())
    for dim in sorted(dims):
        vector_indexes.ensure(dim)
