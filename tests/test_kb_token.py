"""kb_token: personal API tokens from the command line, for scripts and tests."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from kb.models import ApiToken
from tests.factories import make_collection, make_user
from tests.helpers import ROOT

pytestmark = pytest.mark.django_db


def kb_token(*args: str) -> str:
    out = io.StringIO()
    call_command("kb_token", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def models(raw: str):
    return Client().get("/v1/models", headers={"Authorization": f"Bearer {raw}"})


def test_create_prints_the_token_alone_on_its_last_line_and_it_lists_the_users_models():
    reader = make_user("reader")
    ops = make_collection("ops", viewer=[reader])
    make_collection("secret")
    raw = kb_token("create", "--user", "reader", "--name", "ci").splitlines()[-1]
    assert raw.startswith("kb_") and " " not in raw
    assert ApiToken.objects.get(user=reader, name="ci").digest == ApiToken.digest_of(raw)
    response = models(raw)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["kb", f"kb/{ops.pk}"]


def test_list_names_tokens_without_revealing_them_and_revoke_makes_them_refused():
    make_user("reader")
    raw = kb_token("create", "--user", "reader", "--name", "laptop").splitlines()[-1]
    listing = kb_token("list", "--user", "reader")
    assert "laptop" in listing and raw[:10] in listing and raw not in listing and "active" in listing
    assert "Revoked 1 token" in kb_token("revoke", "--user", "reader", "--name", "laptop")
    assert models(raw).status_code == 401
    assert "revoked" in kb_token("list", "--user", "reader")
    with pytest.raises(CommandError, match="no active token named 'laptop'"):
        kb_token("revoke", "--user", "reader", "--name", "laptop")


def test_a_deactivated_user_gets_no_new_token():
    make_user("gone", is_active=False)
    with pytest.raises(CommandError, match="deactivated"):
        kb_token("create", "--user", "gone", "--name", "ci")
    assert not ApiToken.objects.exists()


def test_an_unknown_user_is_a_one_line_error_with_a_non_zero_exit_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # This test run's migrated database, on the embedded server the test session started.
    env.update(KB_DB_NAME=connection.settings_dict["NAME"], KB_EMBEDDED_DB_KEEP="1")
    result = subprocess.run(
        [sys.executable, "manage.py", "kb_token", "create", "--user", "nobody", "--name", "ci"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "No user named 'nobody'." in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
