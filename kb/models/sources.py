"""Sources that sync a collection from where its documents live, and the runs that did it."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from kb.models.core import Collection, InvalidTransition, UploadBatch


class Source(models.Model):
    """A place a collection's documents come from: read on a schedule, or when an editor asks."""

    class Kind(models.TextChoices):
        GIT = "git", "Git repository"
        FOLDER = "folder", "Server folder"
        WEB = "web", "Intranet site"
        CONFLUENCE = "confluence", "Confluence space"
        MEDIAWIKI = "mediawiki", "MediaWiki"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="sources")
    # Also the first folder of its documents' paths, so two sources never claim one path.
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    location = models.CharField(max_length=2000)
    branch = models.CharField(max_length=200, blank=True)
    include = models.JSONField(default=list, blank=True)  # glob patterns over page paths
    exclude = models.JSONField(default=list, blank=True)
    # Kind-specific: web {"prefix", "sitemap"}, confluence {"space", "attachments"},
    # mediawiki {"namespaces"}, git {"web_url"}.
    options = models.JSONField(default=dict, blank=True)
    # {"username", "token"} encrypted with KB_CREDENTIALS_KEY (kb.secrets); never shown again.
    credentials = models.TextField(blank=True, editable=False)
    # Minutes between scheduled runs; None: only when asked (Sync now, kb_source sync).
    every_minutes = models.PositiveIntegerField(null=True, blank=True)
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # What the connector keeps between runs (the commit synced, validators, hashes).
    cursor = models.JSONField(default=dict, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["collection", "name"]
        constraints = [models.UniqueConstraint(fields=["collection", "name"], name="source_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def get_absolute_url(self) -> str:
        return reverse("source_detail", args=[self.pk])

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials)


class SourceRunQuerySet(models.QuerySet):
    def running(self) -> SourceRunQuerySet:
        return self.filter(status=SourceRun.Status.RUNNING)

    def transition(self, to: str, **fields) -> int:
        """Move the runs whose status may lead to `to` there (RUN_TRANSITIONS); the number moved."""
        to = SourceRun.Status(to)
        now = timezone.now()
        if to != SourceRun.Status.RUNNING:
            fields.setdefault("finished_at", now)
        return self.filter(status__in=RUN_TRANSITIONS[to]).update(status=to, heartbeat_at=now, **fields)


class SourceRun(models.Model):
    """One sync of a source: what it found, fetched, replaced and removed, and why anything failed."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Sync now"
        COMMAND = "command", "Command line"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="runs")
    # The documents this run added or replaced: their processing shows on the batch's progress bar.
    batch = models.ForeignKey(UploadBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULE)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Refreshed as pages are stored: a running run whose heartbeat stops was left by a dead
    # worker, and the next attempt takes it over (KB_SOURCE_STALE_SECONDS).
    heartbeat_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=1)
    # BatchSummary as JSON: created/updated/unchanged/removed/refused, errors, removed_paths.
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)  # why the whole run failed (source unreachable ...)

    objects = SourceRunQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            # One run per source at a time: a second start finds this row and does not begin.
            models.UniqueConstraint(fields=["source"], condition=Q(status="running"), name="source_one_running_run")
        ]

    def __str__(self) -> str:
        return f"{self.source} run {self.pk}: {self.status}"

    @property
    def duration(self):
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def duration_text(self) -> str:
        seconds = int(self.duration.total_seconds())
        return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60} s"

    def move(self, to: str, **fields) -> None:
        """Change this run's status (RUN_TRANSITIONS), or raise InvalidTransition."""
        if not SourceRun.objects.filter(pk=self.pk).transition(to, **fields):
            raise InvalidTransition(f"A source run cannot move from {self.status} to {to}.")
        self.refresh_from_db()


_R = SourceRun.Status
# For each status, the statuses a run may come to it from: running → done | failed. A run
# taken over after its worker died stays running.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    _R.RUNNING: frozenset({_R.RUNNING}),
    _R.DONE: frozenset({_R.RUNNING}),
    _R.FAILED: frozenset({_R.RUNNING}),
}
