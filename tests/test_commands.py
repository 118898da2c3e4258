"""kb_ingest and kb_ask, run as an operator would run them."""

import io
import json
import sys

import pytest
from django.core.management import CommandError, call_command

from kb.access import system_user
from kb.models import Collection, Document, Message
from kb.services.conversations import NO_SOURCE_ANSWER
from tests.corpus import BACKUPS, VACATION
from tests.factories import make_collection, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "wiki"
    (root / "ops").mkdir(parents=True)
    (root / "ops" / "backups.md").write_text(BACKUPS)
    (root / "hr").mkdir()
    (root / "hr" / "vacation.md").write_text(VACATION)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    return root


def run(*args, stdin: str | None = None) -> str:
    out = io.StringIO()
    if stdin is not None:
        old, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    finally:
        if stdin is not None:
            sys.stdin = old
    return out.getvalue()


def test_ingest_a_folder_inline_with_json_summary(docs):
    summary = json.loads(run("kb_ingest", str(docs), "--collection", "Wiki", "--create", "--inline", "--json"))
    assert summary["documents"] == 2 and summary["created"] == 2 and summary["failed"] == 0
    assert summary["chunks"] == sum(Document.objects.values_list("chunk_count", flat=True)) > 0
    paths = set(Document.objects.values_list("source_path", flat=True))
    assert paths == {"ops/backups.md", "hr/vacation.md"}  # relative to the folder; hidden folders skipped
    again = json.loads(run("kb_ingest", str(docs), "--collection", "Wiki", "--inline", "--json"))
    assert again["unchanged"] == 2 and again["created"] == 0
    assert Document.objects.count() == 2


def test_ingest_needs_create_for_a_new_collection(docs):
    with pytest.raises(CommandError, match="--create"):
        run("kb_ingest", str(docs), "--collection", "Nope", "--inline")
    assert not Collection.objects.filter(name="Nope").exists()


def test_ingest_exits_non_zero_and_names_the_failed_file(tmp_path):
    (tmp_path / "good.md").write_text(BACKUPS)
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.7 this is not really a pdf")
    out = io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("kb_ingest", str(tmp_path), "--collection", "C", "--create", "--inline", "--json", stdout=out)
    assert excinfo.value.returncode == 1
    summary = json.loads(out.getvalue())
    assert summary["failed"] == 1 and summary["created"] == 2
    assert summary["errors"][0]["source"] == "bad.pdf" and summary["errors"][0]["reason"]


def test_ingest_through_the_real_worker(docs, celery_worker_process):
    summary = json.loads(
        run("kb_ingest", str(docs / "ops"), "--collection", "Q", "--create", "--json", "--timeout", "120")
    )
    assert summary["created"] == 1 and summary["failed"] == 0 and summary["chunks"] >= 2
    assert Document.objects.get().status == Document.Status.READY


@pytest.fixture
def wiki(docs):
    run("kb_ingest", str(docs), "--collection", "Wiki", "--create", "--inline", "--json")


def test_ask_no_generate_json_lists_sources_best_first(wiki):
    record = json.loads(run("kb_ask", "how many vacation days carry over", "--collection", "Wiki",
                            "--no-generate", "--json", "--top-k", "3"))  # fmt: skip
    assert record["answer"] is None
    assert [s["rank"] for s in record["sources"]] == [1, 2, 3]
    assert record["sources"][0]["source"] == "hr/vacation.md"
    assert record["sources"][0]["heading"].endswith("Carry-over")
    scores = [s["score"] for s in record["sources"]]
    assert scores == sorted(scores, reverse=True)
    assert set(record["timings_ms"]) == {"retrieve", "first_token", "total"}
    assert record["timings_ms"]["first_token"] is None


def test_ask_reads_one_question_per_line_from_stdin(wiki):
    out = run("kb_ask", "--collection", "Wiki", "--no-generate", "--json",
              stdin="when does the backup run\n\nhow do I request leave\n")  # fmt: skip
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in records] == ["when does the backup run", "how do I request leave"]
    assert records[0]["sources"][0]["source"] == "ops/backups.md"
    assert records[1]["sources"][0]["source"] == "hr/vacation.md"


def test_ask_as_a_user_sees_only_their_collections(wiki):
    reader = make_user("reader")
    make_collection("Public", viewer=[reader])
    with pytest.raises(CommandError, match="Wiki"):
        run("kb_ask", "backup", "--collection", "Wiki", "--user", "reader", "--no-generate")


def test_ask_generates_an_answer_with_the_model_server(wiki, model_server):
    record = json.loads(run("kb_ask", "When does the database backup run?", "--collection", "Wiki", "--json"))
    assert record["answer"] and "error" not in record
    assert 0 < record["timings_ms"]["first_token"] <= record["timings_ms"]["total"]
    assert record["sources"][0]["source"] == "ops/backups.md"


def test_ask_refuses_with_the_pages_words_and_records_the_question(wiki):
    # Nothing relevant: no model is called (none runs in this test), and the refusal is the
    # conversation service's, word for word the one the pages show.
    record = json.loads(run("kb_ask", "zebra migration across the savanna", "--collection", "Wiki", "--json"))
    refusal = f"{NO_SOURCE_ANSWER} None of them mentions “zebra”, “migration”, “across” or “savanna”."
    assert record["answer"] == refusal and record["sources"] == [] and "error" not in record
    assert record["abstained"] is True
    message = Message.objects.get()
    assert (message.question, message.status, message.answer) == (
        "zebra migration across the savanna", Message.Status.NO_ANSWER, refusal,
    )  # fmt: skip
    assert message.conversation.user == system_user()


def test_ask_stores_the_generated_answer_in_a_conversation(wiki, model_server):
    record = json.loads(run("kb_ask", "When does the database backup run?", "--collection", "Wiki", "--json"))
    message = Message.objects.get()
    assert message.status == Message.Status.COMPLETE and message.answer == record["answer"]
    assert [s["n"] for s in message.sources] == [s["rank"] for s in record["sources"]]


def test_ask_json_has_the_mode_the_checks_and_whether_kb_abstained(wiki, model_server):
    record = json.loads(run("kb_ask", "When does the database backup run?", "--collection", "Wiki", "--json"))
    assert (record["mode"], record["abstained"]) == ("auto", False)
    assert record["extractive"][0]["citations"] == [1]
    assert record["extractive"][0]["text"].startswith("The database backup runs nightly at 02:00")
    for sentence in record["sentences"]:
        assert set(sentence) == {"text", "citations", "supported"}
        assert sentence["supported"] or sentence["citations"] == []  # never cited when not supported
        assert set(sentence["citations"]) <= {s["rank"] for s in record["sources"]}
    retrieval_only = json.loads(run("kb_ask", "How do I bake sourdough?", "--collection", "Wiki", "--no-generate",
                                    "--json"))  # fmt: skip
    assert (retrieval_only["mode"], retrieval_only["abstained"], retrieval_only["sentences"]) == ("retrieval", True, [])


def test_ask_with_no_generate_records_nothing(wiki):
    run("kb_ask", "when does the backup run", "--collection", "Wiki", "--no-generate", "--json")
    assert not Message.objects.exists()


def test_ingest_prints_a_readable_summary(docs):
    out = run("kb_ingest", str(docs), "--collection", "Wiki", "--create", "--inline")
    assert "2 documents: 2 created, 0 updated, 0 unchanged, 0 removed, 0 failed" in out


def test_eval_generate_reports_what_kb_vouched_for_with_the_real_model(wiki, model_server, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"q": "When does the database backup run?", "expected": ["ops/backups.md"]}\n'
        '{"q": "How do I bake sourdough bread?", "expected": []}\n'
    )
    report = json.loads(run("kb_eval", str(questions), "--collection", "Wiki", "--generate", "--json"))
    assert (report["questions"], report["answerable"], report["unanswerable"]) == (2, 1, 1)
    assert report["abstained_right"] == 1 and report["abstained_wrong"] == 0
    [answered] = [r for r in report["per_question"] if not r["abstained"]]
    assert answered["quoted"] and answered["status"] in ("complete", "incomplete", "failed")
    assert report["statements"] == sum(
        1 for s in answered["sentences"] if s["citations"] or not s["supported"]
    )
    assert report["quoted_ms"]["p50"] > 0
    text = run("kb_eval", str(questions), "--collection", "Wiki", "--generate")
    assert "abstained: 1/1 unanswerable, 0/1 answerable" in text
