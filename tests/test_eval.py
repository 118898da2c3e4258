import io
import json
import re

import pytest
from django.core.management import CommandError, call_command

from tests.corpus import BACKUPS, VACATION
from tests.factories import add_document, make_collection, make_user

pytestmark = pytest.mark.django_db

DEPLOY = """# Deployments

## Rollback

To roll back a release, redeploy the previous tag from the pipeline page.
"""


@pytest.fixture
def questions(tmp_path):
    collection = make_collection("handbook")
    add_document(collection, "ops/backups.md", BACKUPS)
    add_document(collection, "hr/vacation.md", VACATION)
    add_document(collection, "ops/deploy.md", DEPLOY)
    path = tmp_path / "questions.jsonl"
    lines = [
        {"q": "how do I restore last night's copy of the database?", "expected": ["ops/backups.md"]},
        {"q": "how many unused vacation days carry over?", "expected": ["hr/vacation.md"]},
        {"q": "how can I undo a bad release?", "expected": ["ops/deploy.md"]},
        {"q": "who won the football world cup in 2018?", "expected": []},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def run_eval(*args) -> str:
    out = io.StringIO()
    call_command("kb_eval", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_eval_reports_hit_rates_of_the_three_modes(questions):
    report = json.loads(run_eval(str(questions), "--collection", "handbook", "--k", "2", "--json"))
    assert set(report["modes"]) == {"dense", "keyword", "hybrid"}
    hybrid = report["modes"]["hybrid"]
    assert hybrid["answerable"] == 3 and hybrid["unanswerable"] == 1
    assert hybrid["hit@1"] == 1.0 and hybrid["hit@2"] == 1.0 and hybrid["mrr@2"] == 1.0
    assert hybrid["refused_unanswerable"] == 1 and hybrid["refused_answerable"] == 0
    assert hybrid["latency_ms"]["total_ms"]["p95"] >= hybrid["latency_ms"]["total_ms"]["p50"] > 0
    assert [q["rank"] for q in report["per_question"]] == [1, 1, 1, None]


def test_eval_counts_a_miss_when_the_expected_source_is_not_retrieved(questions, tmp_path):
    path = tmp_path / "wrong.jsonl"
    path.write_text(json.dumps({"q": "how many unused vacation days carry over?", "expected": ["ops/deploy.md"]}))
    report = json.loads(run_eval(str(path), "--collection", "handbook", "--k", "1", "--json", "--mode", "hybrid"))
    assert report["modes"]["hybrid"]["hit@1"] == 0.0 and report["modes"]["hybrid"]["mrr@1"] == 0.0


def test_eval_prints_a_table_with_latency_per_stage(questions):
    text = run_eval(str(questions), "--collection", "handbook")
    for label in ("dense", "keyword", "hybrid", "hit@1", "hit@5", "MRR@5", "embed", "fuse", "KB_MIN_SIMILARITY"):
        assert label in text


def test_eval_retrieves_with_the_access_of_the_given_user(questions):
    make_user("outsider")
    with pytest.raises(CommandError, match="No collection named"):
        run_eval(str(questions), "--collection", "handbook", "--user", "outsider")


def test_eval_refuses_a_malformed_line(questions, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "no q key"}\n')
    with pytest.raises(CommandError, match="bad.jsonl:1"):
        run_eval(str(path), "--collection", "handbook")


def test_expected_sources_match_across_a_folder_prefix_and_ignore_anchors():
    from kb.management.commands.kb_eval import same_source

    assert same_source("ops/backups.md", "ops/backups.md")
    assert same_source("handbook/ops/backups.md", "ops/backups.md#restore")
    assert same_source("ops/backups.md", "./handbook/ops/backups.md")
    assert not same_source("ops/backups.md", "backups.md.bak")
    assert not same_source("ops/old-backups.md", "backups.md")


def test_eval_scores_each_question_s_quoted_answer_and_prints_its_calibration(questions):
    report = json.loads(run_eval(str(questions), "--collection", "handbook", "--json", "--mode", "hybrid"))
    scores = {q["q"]: q["quote_score"] for q in report["per_question"]}
    assert scores["how many unused vacation days carry over?"] > 0.5
    answerable = [q["quote_score"] for q in report["per_question"] if q["expected"]]
    assert all(0 < s <= 1 for s in answerable)
    text = run_eval(str(questions), "--collection", "handbook", "--mode", "hybrid")
    assert "quote score below  refuses unanswerable  refuses answerable" in text


def test_eval_prints_the_abstention_calibration_and_it_agrees_with_the_run(questions, settings):
    report = json.loads(run_eval(str(questions), "--collection", "handbook", "--json", "--mode", "hybrid"))
    assert all({"known", "coverage", "agreement", "missing"} <= set(q) for q in report["per_question"])
    summary = report["modes"]["hybrid"]
    text = run_eval(str(questions), "--collection", "handbook", "--mode", "hybrid")
    assert "KB_MIN_SIMILARITY (rows) x KB_MIN_KNOWN (columns)" in text
    assert "KB_MIN_SIMILARITY (rows) x KB_MIN_UNAGREED_SIMILARITY (columns)" in text
    # The configured thresholds' cell counts what the run refused.
    lines = text.splitlines()
    start = lines.index("KB_MIN_SIMILARITY (rows) x KB_MIN_KNOWN (columns)")
    columns = [float(v) for v in lines[start + 1].split()]
    row = next(line for line in lines[start + 2 :] if line.split()[0] == f"{settings.KB_MIN_SIMILARITY:.2f}")
    cells = re.findall(r"(\d+) /\s*(\d+)", row)
    unanswerable, answerable = cells[columns.index(settings.KB_MIN_KNOWN)]
    assert (int(unanswerable), int(answerable)) == (summary["refused_unanswerable"], summary["refused_answerable"])
