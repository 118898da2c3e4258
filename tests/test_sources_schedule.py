"""The schedule fires: celery beat queues a due source, a real worker syncs it, and the next run moves on."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from kb.access import system_user
from kb.models import Document, Source, SourceRun
from kb.services.sources import source_add
from tests.factories import make_collection
from tests.helpers import celery_beat, celery_worker, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_beat_syncs_a_due_source_through_the_worker_and_schedules_the_next_run(tmp_path, settings):
    root = tmp_path / "shares" / "notes"
    root.mkdir(parents=True)
    (root / "oncall.md").write_text("# On call\n\nThe on-call phone is handed over on Mondays at 10:00.\n")
    settings.KB_SOURCE_ROOTS = [str(tmp_path / "shares")]
    source = source_add(user=system_user(), collection=make_collection("notes"), kind="folder", location=str(root),
                        every_minutes=5, sync=False)  # fmt: skip
    due = timezone.now() - timedelta(seconds=1)
    Source.objects.filter(pk=source.pk).update(next_run_at=due)
    env = {"KB_SOURCE_ROOTS": str(tmp_path / "shares"), "KB_SOURCE_SCHEDULE_SECONDS": "1"}
    with celery_worker(env), celery_beat(tmp_path / "beat-schedule", env):
        wait_until(
            lambda: Document.objects.filter(source=source, status=Document.Status.READY).exists(),
            timeout=120, what="the scheduled sync to index the page",
        )  # fmt: skip
    run = SourceRun.objects.get(source=source)
    assert run.trigger == SourceRun.Trigger.SCHEDULE and run.status == SourceRun.Status.DONE
    source.refresh_from_db()
    assert source.next_run_at > due + timedelta(minutes=4)
