"""kb_source: add, sync, list and remove sources from the command line, as an operator would."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from kb.models import Document, Source, SourceRun
from tests.factories import make_collection

pytestmark = pytest.mark.django_db


@pytest.fixture
def share(tmp_path, settings):
    root = tmp_path / "shares" / "handbook"
    (root / "it").mkdir(parents=True)
    (root / "it" / "printers.md").write_text("# Printers\n\nThe second floor printer is called Gutenberg.\n")
    (root / "welcome.md").write_text("# Welcome\n\nLunch is served at noon in the canteen.\n")
    (root / "draft.md").write_text("# Draft\n\nNot ready.\n")
    settings.KB_SOURCE_ROOTS = [str(tmp_path / "shares")]
    return root


def _run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("kb_source", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_add_prints_the_new_sources_id_and_with_json_a_last_line_describing_it(share):
    make_collection("handbook")
    out, _ = _run("add", "folder", str(share), "--collection", "handbook", "--exclude", "draft*", "--every", "60",
                  "--no-sync")  # fmt: skip
    source = Source.objects.get()
    assert out.strip() == str(source.pk)
    assert source.exclude == ["draft*"] and source.every_minutes == 60 and source.next_run_at is not None
    out, _ = _run("add", "folder", str(share), "--collection", "handbook", "--name", "second", "--json", "--no-sync")
    described = json.loads(out.strip().splitlines()[-1])
    assert described["id"] == Source.objects.get(name="second").pk and described["kind"] == "folder"


def test_sync_runs_here_and_prints_the_same_summary_as_kb_ingest(share):
    make_collection("handbook")
    _run("add", "folder", str(share), "--collection", "handbook", "--exclude", "draft*", "--no-sync")
    out, _ = _run("sync", "--all", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("documents", "created", "updated", "unchanged", "removed", "failed")} == {
        "documents": 2, "created": 2, "updated": 0, "unchanged": 0, "removed": 0, "failed": 0,
    }  # fmt: skip
    assert summary["chunks"] >= 2 and summary["errors"] == []
    assert Document.objects.filter(status=Document.Status.READY).count() == 2

    (share / "welcome.md").unlink()
    (share / "it" / "printers.md").write_text("# Printers\n\nThe second floor printer is now called Caxton.\n")
    out, _ = _run("sync", "--collection", "handbook", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["updated"], summary["removed"], summary["removed_paths"]) == (1, 1, ["handbook/welcome.md"])


def test_a_failed_source_is_an_error_with_its_reason_and_a_non_zero_exit(share, tmp_path):
    make_collection("handbook")
    _run("add", "folder", str(share), "--collection", "handbook", "--no-sync")
    share.rename(tmp_path / "gone")
    with pytest.raises(CommandError) as failure:
        _run("sync", str(Source.objects.get().pk))
    assert failure.value.returncode == 1
    assert SourceRun.objects.get().status == SourceRun.Status.FAILED


def test_list_shows_sources_with_their_last_run_and_remove_keeps_documents_when_asked(share):
    make_collection("handbook")
    _run("add", "folder", str(share), "--collection", "handbook", "--no-sync")
    _run("sync", "--all")
    out, _ = _run("list", "--json")
    [row] = json.loads(out)
    assert row["collection"] == "handbook" and row["last_run"]["status"] == "done"
    assert row["last_run"]["summary"]["created"] == 3
    out, _ = _run("list")
    assert "handbook/handbook" in out and "on demand" in out
    out, _ = _run("remove", str(row["id"]), "--keep-documents")
    assert "kept" in out and Document.objects.count() == 3 and not Source.objects.exists()


def test_refusals_are_one_line_errors_not_tracebacks(share, tmp_path):
    with pytest.raises(CommandError, match="No collection named 'nope'"):
        _run("add", "folder", str(share), "--collection", "nope")
    make_collection("handbook")
    with pytest.raises(CommandError, match="outside the folders kb may read"):
        _run("add", "folder", str(tmp_path), "--collection", "handbook")
    with pytest.raises(CommandError, match="No such source"):
        _run("sync", "999999")
    with pytest.raises(CommandError, match="No source 999999"):
        _run("remove", "999999")
