"""Workers killed mid-batch lose nothing (issue 17): every document ends ready with exactly the
chunks a clean run stores, none duplicated, none missing, none stuck.

Real parts throughout: the Celery worker on Redis, the embedding model, Postgres. Figures go to
tests/artifacts/faults/ for docs/reliability.md. The kill points are random; the seed is
KB_FAULT_SEED (printed in the figures), so a failing sequence can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import psutil
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Max

from kb.access import system_user
from kb.models import Chunk, Document
from kb.services.documents import batch_upload
from tests.corpus import wiki_pages
from tests.factories import make_collection
from tests.helpers import celery_beat, celery_worker, kill_tree, record_fault, wait_until
from tests.ingestion.builders import make_zip

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = 60
KILLS = 10
SEED = int(os.environ.get("KB_FAULT_SEED", "1717"))


def _upload_wiki(collection) -> None:
    archive = SimpleUploadedFile("wiki.zip", make_zip(wiki_pages(PAGES)).getvalue(), "application/zip")
    batch_upload(user=system_user(), collection=collection, files=[archive])


def _documents(collection):
    return Document.objects.filter(collection=collection)


def _settled(collection) -> bool:
    documents = _documents(collection)
    return documents.count() == PAGES and not documents.exclude(status=Document.Status.READY).exists()


def _chunks(collection) -> dict[str, list[tuple[int, str]]]:
    by_page: dict[str, list[tuple[int, str]]] = {}
    rows = Chunk.objects.filter(document__collection=collection).order_by("document__source_path", "ordinal")
    for path, ordinal, text in rows.values_list("document__source_path", "ordinal", "text"):
        by_page.setdefault(path, []).append((ordinal, text))
    return by_page


def _compare(collection, clean: dict[str, list[tuple[int, str]]]) -> dict:
    """lost / duplicated chunks against the clean run, and documents not ready (stuck)."""
    got = _chunks(collection)
    lost = duplicated = 0
    for path, expected in clean.items():
        have = Counter(got.get(path, []))
        want = Counter(expected)
        lost += sum((want - have).values())
        duplicated += sum((have - want).values())
    stuck = _documents(collection).exclude(status=Document.Status.READY).count()
    null_vectors = Chunk.objects.filter(document__collection=collection, embedding__isnull=True).count()
    return {"lost": lost, "duplicated": duplicated, "stuck": stuck, "without_vector": null_vectors,
            "documents": _documents(collection).count(), "chunks": sum(len(v) for v in got.values())}  # fmt: skip


def _wait_processing(collection, timeout: float = 120) -> float:
    wait_until(lambda: _documents(collection).filter(status=Document.Status.PROCESSING).exists(), timeout=timeout,
               what="the batch to start")  # fmt: skip
    return time.monotonic()


def test_pool_processes_killed_at_random_points_of_a_batch_ten_times_lose_and_duplicate_nothing(
    celery_worker_process,
):
    rng = random.Random(SEED)
    clean_collection = make_collection("clean run")
    _upload_wiki(clean_collection)
    started = _wait_processing(clean_collection)
    wait_until(lambda: _settled(clean_collection), timeout=300, what="the clean run")
    clean_seconds = time.monotonic() - started
    clean = _chunks(clean_collection)
    assert len(clean) == PAGES and sum(map(len, clean.values())) >= 2 * PAGES

    rounds = []
    for round_number in range(2 * KILLS):
        if sum(r["mid_batch"] for r in rounds) == KILLS:
            break
        collection = make_collection(f"killed {round_number}")
        _upload_wiki(collection)
        started = _wait_processing(collection)
        delay = rng.uniform(0.0, 0.8 * clean_seconds)
        time.sleep(delay)
        stages = Counter(_documents(collection).values_list("stage", flat=True))
        mid_batch = not _settled(collection)
        children = psutil.Process(celery_worker_process.pid).children()
        assert children, "the prefork pool runs the task in a child process"
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        wait_until(lambda c=collection: _settled(c), timeout=300, what=f"round {round_number} after the kill")
        outcome = _compare(collection, clean)
        rounds.append({"delay_s": round(delay, 2), "stages_at_kill": dict(stages), "mid_batch": mid_batch,
                       "recovered_s": round(time.monotonic() - t_kill, 1), **outcome})  # fmt: skip
        assert outcome["lost"] == outcome["duplicated"] == outcome["stuck"] == outcome["without_vector"] == 0, rounds
        assert outcome["chunks"] == sum(map(len, clean.values()))
        assert celery_worker_process.poll() is None, "the worker's main process survives its pool's deaths"

    record_fault(
        "pool_process_sigkill", seed=SEED, pages=PAGES, clean_seconds=round(clean_seconds, 1),
        kills_mid_batch=sum(r["mid_batch"] for r in rounds), rounds=rounds,
        documents_checked=PAGES * len(rounds), lost=sum(r["lost"] for r in rounds),
        duplicated=sum(r["duplicated"] for r in rounds), stuck=sum(r["stuck"] for r in rounds),
    )  # fmt: skip
    assert sum(r["mid_batch"] for r in rounds) == KILLS


def test_a_whole_worker_killed_mid_batch_is_picked_up_within_minutes_of_its_heartbeat_after_a_restart(tmp_path):
    """Main process and pool SIGKILLed together; no operator: beat's sweep re-queues the silent documents.

    Redis keeps the killed worker's unacknowledged message for the visibility timeout (an hour
    and more); kb does not wait for it. Short heartbeat and stale limits here so the test takes
    seconds; the defaults (30 s, 180 s, a sweep each 60 s) make the same path about 4 minutes.
    """
    env = {"KB_HEARTBEAT_SECONDS": "1", "KB_STALE_SECONDS": "4", "KB_STALE_SWEEP_SECONDS": "1"}
    clean_collection = make_collection("clean run")
    collection = make_collection("killed worker")
    with celery_worker(env) as worker:
        _upload_wiki(clean_collection)
        wait_until(lambda: _settled(clean_collection), timeout=300, what="the clean run")
        _upload_wiki(collection)
        wait_until(lambda: _documents(collection).filter(stage="embedding").exists(), timeout=120,
                   what="embedding to start")  # fmt: skip
        time.sleep(0.5)
        killed = kill_tree(worker.pid)
        t_kill = time.monotonic()
    assert killed >= 2, "the main process and its pool"
    assert _documents(collection).filter(status=Document.Status.PROCESSING).exists()
    last_beat = _documents(collection).aggregate(last=Max("updated_at"))["last"]
    time.sleep(3)
    # Dead workers leave their documents "processing"; no beat while nothing runs.
    assert _documents(collection).aggregate(last=Max("updated_at"))["last"] == last_beat, "a dead worker beats no more"

    with celery_worker(env, name="worker-restarted"), celery_beat(tmp_path / "beat-schedule", env):
        wait_until(lambda: _settled(collection), timeout=300, what="the killed worker's documents")
        recovered_s = time.monotonic() - t_kill
    outcome = _compare(collection, _chunks(clean_collection))
    attempts = Counter(_documents(collection).values_list("attempts", flat=True))
    record_fault("whole_worker_sigkill", pages=PAGES, killed_processes=killed, recovered_s=round(recovered_s, 1),
                 settings=env, attempts=dict(attempts), **outcome)  # fmt: skip
    assert outcome["lost"] == outcome["duplicated"] == outcome["stuck"] == 0, outcome
    assert set(attempts) <= {1, 2}, "the interrupted documents ran once more, the others once"
