"""The data of kb: collections and who may read them, documents and their chunks, conversations."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import F, Func, Q, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from pgvector.django import VectorField

from ingestion.spec import EmbedSpec, configured_spec


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    EDITOR = "editor", "Editor"
    OWNER = "owner", "Owner"


ROLE_RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.OWNER: 3}


def configured_embed_model() -> dict:
    return configured_spec().as_json()


GENERATION_SEQUENCE = "kb_embed_generation_seq"  # created in migration 0007
NEXT_GENERATION = Func(Value(GENERATION_SEQUENCE), function="nextval", output_field=models.BigIntegerField())


class Collection(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    # Every signed-in, active user reads it (as a viewer); grants still give higher roles.
    open_to_all = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The model that made the vectors searched (an EmbedSpec): questions to this collection
    # are embedded with it, and new documents too, whatever the settings say today.
    embed_model = models.JSONField(default=configured_embed_model, editable=False)
    # Chunks carry the generation they were embedded for; search reads only those of their
    # collection's embed_generation. Numbers come from one sequence, so they are unique
    # across collections and "generation IN (active generations)" picks the live chunks.
    embed_generation = models.BigIntegerField(db_default=NEXT_GENERATION, editable=False)
    # While a re-index runs: the model and generation of its staged chunks; None otherwise.
    reindex_model = models.JSONField(null=True, blank=True, editable=False)
    reindex_generation = models.BigIntegerField(null=True, blank=True, editable=False)
    # Passages from documents not changed at their source for longer than this are flagged
    # as possibly out of date beside an answer; None: never.
    stale_after_days = models.PositiveIntegerField(null=True, blank=True)
    # Deleted, and purged once KB_DELETE_GRACE_SECONDS have passed; until then hidden from
    # everyone (kb.access) and restorable by its owners.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def embed_spec(self) -> EmbedSpec:
        return EmbedSpec.from_json(self.embed_model)

    @property
    def reindex_spec(self) -> EmbedSpec | None:
        return None if self.reindex_model is None else EmbedSpec.from_json(self.reindex_model)


class CollectionGrant(models.Model):
    """One line of a collection's access list: a user or a group, with a role."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="kb_grants"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="kb_grants")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="grant_user_xor_group",
            ),
            models.UniqueConstraint(
                fields=["collection", "user"], condition=Q(user__isnull=False), name="grant_unique_user"
            ),
            models.UniqueConstraint(
                fields=["collection", "group"], condition=Q(group__isnull=False), name="grant_unique_group"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.group} → {self.collection}: {self.role}"


class InvalidTransition(Exception):
    """A document was asked to move to a status its current one does not lead to."""


class DocumentQuerySet(models.QuerySet):
    def in_collections(self, collection_ids) -> DocumentQuerySet:
        return self.filter(collection_id__in=collection_ids)

    def unfinished(self) -> DocumentQuerySet:
        return self.exclude(status__in=FINISHED)

    def alive(self) -> DocumentQuerySet:
        """Documents not deleted (a deleted one waits for its purge, restorable, shown nowhere else)."""
        return self.filter(deleted_at__isnull=True)

    def deleted(self) -> DocumentQuerySet:
        return self.filter(deleted_at__isnull=False)

    def transition(self, to: str, **fields) -> int:
        """Move the documents whose status may lead to `to` there; the number moved.

        The one way a document's status changes (DOCUMENT_TRANSITIONS says from where to
        where). One conditional UPDATE: the row is locked while it is checked and written, so
        a worker's progress mark cannot undo a cancel that landed a moment before it. Every
        move refreshes updated_at, the heartbeat that stale-job recovery reads.
        """
        to = Document.Status(to)
        now = timezone.now()
        if to == Document.Status.PROCESSING:  # when work on this version began: batches' time left
            fields.setdefault("started_at", Coalesce(F("started_at"), Value(now)))
        elif to == Document.Status.QUEUED:
            fields.setdefault("started_at", None)
        return self.filter(status__in=DOCUMENT_TRANSITIONS[to]).update(status=to, updated_at=now, **fields)


@dataclass
class BatchSummary:
    """What an upload decided, file by file, before any processing: UploadBatch.summary as a value.

    Stored as JSON on the batch; the services add to it, the pages and kb_ingest read it.
    """

    files: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    refused: int = 0
    ignored: int = 0  # attachments and other files of an archive that are not pages
    errors: list[dict] = field(default_factory=list)  # [{"source", "reason"}]
    removed_paths: list[str] = field(default_factory=list)

    COUNTS = ("created", "updated", "unchanged", "removed", "refused", "ignored")

    @classmethod
    def from_json(cls, data: dict | None) -> BatchSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def as_json(self) -> dict:
        return asdict(self)

    def count(self, outcome: str) -> None:
        """One more file with this outcome ("created", "updated" or "unchanged")."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    def refuse(self, source: str, reason: str) -> None:
        self.refused += 1
        self.errors.append({"source": source, "reason": reason})

    def add(self, other: BatchSummary) -> None:
        """Fold in what an archive of the batch decided (its files are not counted again)."""
        for key in self.COUNTS:
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.errors.extend(other.errors)
        self.removed_paths.extend(other.removed_paths)


class UploadBatch(models.Model):
    """Files added together (a browser upload, an archive, a kb_ingest run): one progress bar, one cancel."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="batches")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    label = models.CharField(max_length=300, blank=True)  # "3 files", "wiki.zip"
    # What the upload itself decided: {"created", "updated", "unchanged", "removed", "refused", "errors": [...]}
    summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.label or f"Batch {self.pk}"


class Document(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=500)
    # The file name as uploaded, or the path inside an uploaded folder or archive.
    source_path = models.CharField(max_length=1000)
    content_hash = models.CharField(max_length=64)
    file = models.FileField(upload_to="documents/%Y/%m/", max_length=500)
    size = models.BigIntegerField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # Human-readable stage while processing ("parsing", "embedding"), and progress counts.
    stage = models.CharField(max_length=40, blank=True)
    progress_done = models.IntegerField(default=0)
    progress_total = models.IntegerField(default=0)
    error = models.TextField(blank=True)
    chunk_count = models.IntegerField(default=0)
    # The upload this version came in with; an archive's documents share it.
    batch = models.ForeignKey(UploadBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="documents")
    # The archive a document came from ("" for a single file): re-uploading it removes vanished pages.
    source_archive = models.CharField(max_length=300, blank=True)
    # The source that syncs it (None for uploads): the sync adds, replaces and removes it.
    source = models.ForeignKey("kb.Source", null=True, blank=True, on_delete=models.SET_NULL, related_name="documents")
    # The source's version marker for the page (blob id, version number, revision, hash):
    # the same ref next sync means unchanged, and the page is not even fetched.
    source_ref = models.CharField(max_length=200, blank=True)
    # The page's own address (a wiki page, a site's URL, the file in a Git web view): citations link to it.
    url = models.URLField(max_length=2000, blank=True)
    # When the page last changed at its source (commit date, Last-Modified, page version), and
    # when a sync last found it there.
    source_modified = models.DateTimeField(null=True, blank=True)
    seen_at = models.DateTimeField(null=True, blank=True)
    # Front matter, folder breadcrumb and links to other pages, as the reader found them.
    metadata = models.JSONField(default=dict, blank=True)
    # Times processing started for this version: a stale job is re-queued once, then failed.
    attempts = models.IntegerField(default=0)
    # When processing of this version first started (set by transition).
    started_at = models.DateTimeField(null=True, blank=True)
    # Deleted: its chunks went at once; the row and file wait KB_DELETE_GRACE_SECONDS for an undo.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        ordering = ["source_path"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "source_path"], name="document_unique_source"),
        ]
        indexes = [
            models.Index(fields=["collection", "status"]),
            models.Index(fields=["deleted_at"], condition=Q(deleted_at__isnull=False), name="document_deleted_idx"),
        ]

    def __str__(self) -> str:
        return self.source_path

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def breadcrumb(self) -> list[str]:
        """The folders above the document in its upload (a folder or an archive), outermost first."""
        return self.source_path.split("/")[:-1]

    @property
    def filename(self) -> str:
        return self.source_path.rsplit("/", 1)[-1]


FINISHED = (Document.Status.READY, Document.Status.FAILED, Document.Status.CANCELLED)

_S = Document.Status
# The document state machine: for each status, the statuses a document may come to it from.
# queued → processing → ready | failed; an unfinished document can be cancelled; a new
# version (an upload, or stale-job recovery) queues any document again; re-indexing takes a
# ready (or failed, still searchable) document through processing once more.
DOCUMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    _S.QUEUED: frozenset({_S.QUEUED, _S.PROCESSING, _S.READY, _S.FAILED, _S.CANCELLED}),
    _S.PROCESSING: frozenset({_S.QUEUED, _S.PROCESSING, _S.READY, _S.FAILED}),
    _S.READY: frozenset({_S.QUEUED, _S.PROCESSING, _S.READY, _S.FAILED}),
    _S.FAILED: frozenset({_S.QUEUED, _S.PROCESSING, _S.READY, _S.FAILED}),
    _S.CANCELLED: frozenset({_S.QUEUED, _S.PROCESSING}),
}


class _EqualsAnyOf(Func):
    """`expression = ANY(ARRAY(subquery))`.

    The subquery runs once, before the scan, and each chunk is only compared with its
    result. `IN (subquery)` may be planned as a join, which reads every row the HNSW
    index returns before sorting them again: the index would no longer bound the search.
    """

    output_field = models.BooleanField()

    def as_sql(self, compiler, connection, **extra_context):
        value, subquery = self.get_source_expressions()
        value_sql, value_params = compiler.compile(value)
        subquery_sql, subquery_params = compiler.compile(subquery)
        return f"({value_sql} = ANY(ARRAY{subquery_sql}))", (*value_params, *subquery_params)


class ChunkQuerySet(models.QuerySet):
    def in_collections(self, collection_ids) -> ChunkQuerySet:
        return self.filter(collection_id__in=collection_ids)

    def live(self) -> ChunkQuerySet:
        """Chunks searched and shown: of their collection's model, not staged by a re-index still running,
        and never of a deleted document (whose chunks go when it is deleted; this covers a worker's race)."""
        deleted = models.Subquery(Document.objects.deleted().order_by().values("pk"))
        return self.filter(
            _EqualsAnyOf(F("generation"), models.Subquery(Collection.objects.order_by().values("embed_generation")))
        ).exclude(_EqualsAnyOf(F("document_id"), deleted))


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised from the document so that access filters on retrieval need no join.
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    ordinal = models.IntegerField()
    text = models.TextField()
    heading_path = models.CharField(max_length=1000, blank=True)
    page = models.IntegerField(null=True, blank=True)
    # Offsets of the chunk in the document's extracted text, for highlighting.
    start_char = models.IntegerField(null=True, blank=True)
    end_char = models.IntegerField(null=True, blank=True)
    # Untyped, so that collections on models of different sizes share the table. Each size N
    # has its own partial HNSW index on (embedding::vector(N)) WHERE embedding_dim = N,
    # made by kb.vector_indexes when a model of that size first arrives, not declared here.
    embedding = VectorField()
    embedding_dim = models.GeneratedField(
        expression=Func(F("embedding"), function="vector_dims"),
        output_field=models.IntegerField(),
        db_persist=True,
    )
    # The Collection.embed_generation it was embedded for. A re-index writes its chunks
    # under a new generation beside the ones in use; they stay invisible until the collection
    # switches to that generation in one transaction (ingestion.store.collection_reindex_finish).
    generation = models.BigIntegerField()
    # Headings are label A and body text D, so BM25 may count a heading word more
    # (KB_BM25_HEADING_WEIGHT): a passage whose section is about the words ranks above one
    # that mentions them in passing.
    search_vector = models.GeneratedField(
        expression=SearchVector("heading_path", weight="A", config=settings.KB_FTS_CONFIG)
        + SearchVector("text", weight="D", config=settings.KB_FTS_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    # Lexeme occurrences in search_vector: BM25's document length. From the same expression,
    # as a generated column cannot read another; kb_tsvector_length is made in migration 0011.
    search_length = models.GeneratedField(
        expression=Func(
            SearchVector("heading_path", weight="A", config=settings.KB_FTS_CONFIG)
            + SearchVector("text", weight="D", config=settings.KB_FTS_CONFIG),
            function="kb_tsvector_length",
        ),
        output_field=models.BigIntegerField(),
        db_persist=True,
    )

    objects = ChunkQuerySet.as_manager()

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "generation", "ordinal"], name="chunk_unique_ordinal"),
        ]
        indexes = [
            GinIndex(fields=["search_vector"], name="chunk_search_gin"),
            # Every search filters on both (access by collection, live generation): with both
            # in one index, counting a collection's live chunks for the keyword leg's IDF is
            # an index-only scan (2 ms instead of 8 on the Python manual).
            models.Index(fields=["collection", "generation"], name="chunk_collection_gen_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.document} #{self.ordinal}"


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, user) -> ConversationQuerySet:
        return self.filter(user=user) if user.is_authenticated else self.none()


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    collections = models.ManyToManyField(Collection, related_name="+", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("conversation_detail", args=[self.pk])


class Message(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        NO_ANSWER = "no_answer", "No relevant sources"
        INCOMPLETE = "incomplete", "Incomplete"
        FAILED = "failed", "Failed"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    question = models.TextField()
    answer = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    # What retrieval searched for: the question itself, or a follow-up made standalone.
    search_query = models.TextField(blank=True)
    # The numbered sources given to the model: [{"n", "chunk_id", "document_id", "title", ...}].
    sources = models.JSONField(default=list, blank=True)
    # How it was answered (KB_ANSWER_MODE when asked): "extractive", "generative" or "auto".
    mode = models.CharField(max_length=12, blank=True)
    # Source sentences that answer the question, quoted verbatim as soon as retrieval ends:
    # {"sentences": [{"text", "citations": [n]}], "score": cosine}; no sentences when none answers.
    extractive = models.JSONField(default=dict, blank=True)
    # What kb decided about each sentence of the generated answer (kb.verification.Sentence):
    # [{"text", "citations", "supported", "score", "code", "written", "unknown"}].
    sentences = models.JSONField(default=list, blank=True)
    # Set by the Stop button; the stream that is writing the answer checks it and stops. A
    # row, not process memory, because the stop request may reach another web process.
    stop_requested = models.BooleanField(default=False)
    # The Redis stream that relays this answer's pieces to readers in any web process
    # (kb.answer_relay), named afresh each time the answer is claimed for writing.
    stream_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.question[:60]

    @property
    def is_finished(self) -> bool:
        return self.status not in (self.Status.PENDING, self.Status.STREAMING)


class Feedback(models.Model):
    """A reader's thumbs up or down on an answer, kept for admins with the answer it judged."""

    class Rating(models.IntegerChoices):
        UP = 1, "Helpful"
        DOWN = -1, "Not helpful"

    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True)
    # Copies, so the judgement still reads right after a regenerate replaces the answer.
    question = models.TextField()
    answer = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="feedback_one_per_user")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()}: {self.question[:60]}"


class ApiToken(models.Model):
    """A personal API token: only its SHA-256 digest is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # The first characters of the token, to tell tokens apart in lists; not enough to use one.
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def digest_of(raw: str) -> str:
        """What is stored of a token: its SHA-256, so a leaked table holds no usable token."""
        return hashlib.sha256(raw.encode()).hexdigest()


class KeywordTerm(models.Model):
    """How many live-or-staged chunks of a collection's generation hold a lexeme: BM25's document frequency.

    Written only by Postgres triggers on kb_chunk (migration 0011), in the transaction that
    writes or deletes the chunks, so the keyword leg's IDF is never out of date and no code
    path that replaces chunks can forget it. Not a foreign key: chunk deletions cascading
    from a collection decrement these rows while the collection goes.
    """

    pk = models.CompositePrimaryKey("collection_id", "generation", "lexeme")
    collection_id = models.BigIntegerField()
    generation = models.BigIntegerField()
    lexeme = models.TextField()
    df = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.lexeme} in {self.df} chunks of collection {self.collection_id}"


class KeywordTotal(models.Model):
    """Chunks, sections and lexeme occurrences per collection generation: BM25's N and average
    lengths, of chunks and of sections (a document's chunks under one heading path). Trigger-kept."""

    pk = models.CompositePrimaryKey("collection_id", "generation")
    collection_id = models.BigIntegerField()
    generation = models.BigIntegerField()
    chunks = models.BigIntegerField()
    length = models.BigIntegerField()
    sections = models.BigIntegerField()

    def __str__(self) -> str:
        return f"collection {self.collection_id} generation {self.generation}: {self.chunks} chunks"


class AuditEvent(models.Model):
    """Who did what, when: uploads, deletions, re-indexing and access changes.

    Names are copied next to the foreign keys so the record outlives what it describes.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    collection = models.ForeignKey(Collection, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    collection_name = models.CharField(max_length=200, blank=True)
    target = models.CharField(max_length=1000, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"
