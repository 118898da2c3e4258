"""Production settings come from the environment and refuse insecure defaults."""

import os
import subprocess
import sys

from tests.helpers import ROOT

PRODUCTION = {
    "DATABASE_URL": "postgres://kb:secret@db.invalid:5432/kb",
    "DJANGO_SECRET_KEY": "x" * 60 + "-a-long-random-production-key",
    "DJANGO_ALLOWED_HOSTS": "kb.example.org",
}


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "KB_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True
    )


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION.items() if k != "DJANGO_SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_settings_pass_the_deployment_checklist():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_is_off_unless_asked_for():
    result = manage("shell", "-c", "from django.conf import settings; print(settings.DEBUG)", env=PRODUCTION)
    assert result.stdout.strip().endswith("False"), result.stderr


def test_out_of_range_retrieval_settings_stop_start_up_with_the_variable_named():
    for name, value, message in (
        ("KB_BM25_HEADING_WEIGHT", "-1", "KB_BM25_HEADING_WEIGHT=-1.0: use 0 or more."),
        ("KB_BM25_B", "1.5", "KB_BM25_B=1.5: use between 0 and 1."),
        ("KB_RERANK_API", "openai", "KB_RERANK_API='openai': use auto, tei or cohere."),
        ("KB_RECENCY_WEIGHT", "-0.1", "KB_RECENCY_WEIGHT=-0.1: use 0 or more."),
        ("KB_KEYWORD_CANDIDATES", "-5", "KB_KEYWORD_CANDIDATES=-5: use 0 (no bound) or more."),
        ("KB_HNSW_EF_SEARCH", "0", "KB_HNSW_EF_SEARCH=0: use between 1 and 1000."),
        ("KB_SOURCE_DELAY", "-1", "KB_SOURCE_DELAY=-1.0: use 0 or more."),
        ("KB_STALE_SECONDS", "60", "KB_STALE_SECONDS=60 must be at least 3 × KB_HEARTBEAT_SECONDS=30"),
    ):
        result = manage("check", env={name: value})
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr  # an operator's mistake, said in one line


def test_a_malformed_credentials_key_is_one_line_naming_the_variable():
    result = manage("check", env={"KB_CREDENTIALS_KEY": "not-a-fernet-key"})
    assert result.returncode != 0 and "KB_CREDENTIALS_KEY must hold Fernet keys" in result.stderr
    assert "Traceback" not in result.stderr


def test_kb_commands_on_a_database_never_migrated_say_to_migrate_first(tmp_path):
    result = manage("kb_source", "list", env={"KB_VAR_DIR": str(tmp_path / "var")})
    assert result.returncode != 0 and "run `python manage.py migrate` first" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
