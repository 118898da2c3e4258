"""kb's model-server client against vLLM, TGI and SGLang, played by tests/openai_server_standins.py.

None of the three runs without a GPU, so each stand-in answers in the shapes read from its
server's source; kb's client (kb.llm), huggingface_hub's parser and Django's stack are real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest
from asgiref.sync import async_to_sync

from kb import llm
from kb.models import Message
from tests.factories import ask
from tests.helpers import ROOT, in_own_thread, read_stream
from tests.openai_server_standins import FLAVOURS, ServerBehaviour, model_server_standin

QUESTION = [{"role": "user", "content": "When does the backup run?"}]
SERVERS = ("vllm", "tgi", "sglang")
MODES = ("sync", "async")


@pytest.fixture(autouse=True)
def fresh_discovery(monkeypatch):
    # Names found on a port an earlier test's stand-in used must not carry over.
    monkeypatch.setattr(llm, "_discovered", {})


@pytest.fixture
def server(settings, caplog):
    """Start a stand-in with the given behaviour and point kb at it: `with server(b) as b:`."""
    caplog.set_level(logging.INFO, logger="kb.llm")
    settings.KB_LLM_MODEL = "standin-model"
    settings.KB_LLM_API_KEY = ""

    def start(behaviour: ServerBehaviour):
        class Running:
            def __enter__(self):
                self._cm = model_server_standin(behaviour)
                settings.KB_LLM_URL = self._cm.__enter__()
                return behaviour

            def __exit__(self, *exc):
                return self._cm.__exit__(*exc)

        return Running()

    return start


def answer(mode: str) -> tuple[list[str], llm.ModelServerError | None]:
    """The pieces kb's client yields for QUESTION, and the ModelServerError that ended them, if any."""
    pieces: list[str] = []
    if mode == "sync":
        try:
            for piece in llm.stream_chat(QUESTION):
                pieces.append(piece)
        except llm.ModelServerError as exc:
            return pieces, exc
        return pieces, None

    async def collect():
        try:
            async for piece in llm.astream_chat(QUESTION):
                pieces.append(piece)
        except llm.ModelServerError as exc:
            return exc
        return None

    return pieces, in_own_thread(asyncio.run, collect())


# --- The model's name, the usage chunk, the key ------------------------------------------------


@pytest.mark.parametrize("flavour", SERVERS)
@pytest.mark.parametrize("mode", MODES)
def test_the_configured_model_name_is_sent_and_the_answer_streams(server, flavour, mode):
    with server(ServerBehaviour(flavour=flavour)) as b:
        pieces, error = answer(mode)
    assert error is None
    assert pieces == b.tokens
    assert [chat["model"] for chat in b.chats] == ["standin-model"]


@pytest.mark.parametrize("mode", MODES)
def test_without_a_configured_name_the_first_model_the_server_lists_is_asked_for(server, settings, mode):
    settings.KB_LLM_MODEL = ""
    with server(ServerBehaviour(served=["qwen-kb", "qwen-kb-lora"])) as b:
        assert answer(mode) == (b.tokens, None)
        assert answer(mode) == (b.tokens, None)
    assert [chat["model"] for chat in b.chats] == ["qwen-kb", "qwen-kb"]
    assert [r["path"] for r in b.requests if r["method"] == "GET"] == ["/v1/models"], "listed once, then remembered"


@pytest.mark.parametrize("mode", MODES)
def test_a_found_name_the_restarted_server_no_longer_serves_is_found_again(server, settings, caplog, mode):
    settings.KB_LLM_MODEL = ""
    with server(ServerBehaviour(served=["model-a"])) as b:
        assert answer(mode) == (b.tokens, None)
        b.served = ["model-b"]  # restarted with another model
        pieces, error = answer(mode)
        assert pieces == [] and "HTTP 404" in str(error)
        assert "kb asked for the model 'model-a'; it serves 'model-b'" in caplog.text
        assert answer(mode) == (b.tokens, None)
    assert [chat["model"] for chat in b.chats] == ["model-a", "model-a", "model-b"]


@pytest.mark.parametrize("flavour", SERVERS)
@pytest.mark.parametrize("mode", MODES)
def test_the_final_usage_chunk_without_choices_ends_the_answer_cleanly(server, flavour, mode):
    with server(ServerBehaviour(flavour=flavour)) as b:
        pieces, error = answer(mode)
    assert b.chats[0]["stream_options"] == {"include_usage": True}
    assert b.usage_sent, "the stand-in sent its usage chunk with empty choices"
    assert error is None and pieces == b.tokens


@pytest.mark.parametrize("mode", MODES)
def test_vllms_forced_usage_chunk_is_tolerated_as_well(server, mode):
    with server(ServerBehaviour(flavour="vllm", force_usage=True)) as b:
        assert answer(mode) == (b.tokens, None)
    assert b.usage_sent


@pytest.mark.parametrize("flavour", SERVERS)
@pytest.mark.parametrize("mode", MODES)
def test_the_api_key_is_sent_as_a_bearer_token_on_every_request(server, settings, flavour, mode):
    settings.KB_LLM_API_KEY = "s3cret-key"
    settings.KB_LLM_MODEL = ""  # the model list is asked for too
    with server(ServerBehaviour(flavour=flavour, api_key="s3cret-key")) as b:
        pieces, error = answer(mode)
    assert error is None and pieces == b.tokens
    assert [r["path"] for r in b.requests] == ["/v1/models", "/v1/chat/completions"]
    assert {r["authorization"] for r in b.requests} == {"Bearer s3cret-key"}


@pytest.mark.parametrize("flavour", SERVERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_api_key_tells_the_reader_little_and_the_operator_which_setting(
    server, settings, caplog, flavour, mode
):
    settings.KB_LLM_API_KEY = "stale-key"
    with server(ServerBehaviour(flavour=flavour, api_key="s3cret-key")):
        pieces, error = answer(mode)
    assert pieces == []
    assert str(error) == "The model server answered with an error (HTTP 401). Try again, or tell your operator."
    assert "refused kb's credentials (HTTP 401" in caplog.text and "KB_LLM_API_KEY" in caplog.text
    assert "stale-key" not in caplog.text


@pytest.mark.parametrize("flavour", ["vllm", "vllm-legacy"])
@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_model_is_logged_with_the_names_the_server_offers(server, settings, caplog, flavour, mode):
    settings.KB_LLM_MODEL = "tgi"  # the old default, which vLLM does not serve
    with server(ServerBehaviour(flavour=flavour, served=["alpha", "beta"])) as b:
        pieces, error = answer(mode)
    assert pieces == [] and b.chats[0]["model"] == "tgi"
    assert str(error) == "The model server answered with an error (HTTP 404). Try again, or tell your operator."
    assert "127.0.0.1" not in str(error)
    log = caplog.text
    assert "The model `tgi` does not exist." in log
    assert "kb asked for the model 'tgi'; it serves 'alpha', 'beta'" in log and "Set KB_LLM_MODEL" in log


# --- The servers' errors --------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
def test_an_http_error_payload_reaches_the_log_and_the_reader_gets_a_friendly_message(server, caplog, flavour, mode):
    with server(ServerBehaviour(flavour=flavour, status=500, message="KV cache exhausted (boom-7f3)")):
        pieces, error = answer(mode)
    assert pieces == []
    assert str(error) == "The model server answered with an error (HTTP 500). Try again, or tell your operator."
    assert "boom-7f3" not in str(error)
    assert "answered HTTP 500" in caplog.text and "KV cache exhausted (boom-7f3)" in caplog.text


def test_an_overloaded_tgi_asks_the_reader_to_try_again_in_a_moment(server, caplog):
    with server(ServerBehaviour(flavour="tgi", status=429, message="Model is overloaded")):
        pieces, error = answer("async")
    assert str(error) == llm.BUSY
    assert "is overloaded (HTTP 429" in caplog.text and "Model is overloaded" in caplog.text


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
def test_an_error_sent_inside_the_stream_keeps_what_arrived_and_reaches_the_log(server, caplog, flavour, mode):
    with server(ServerBehaviour(flavour=flavour, fail_after=2)) as b:
        pieces, error = answer(mode)
    assert pieces == b.tokens[:2]
    assert str(error) == llm.BROKE_OFF_WITH_ERROR
    assert "an error event in its stream" in caplog.text and "illegal memory access" in caplog.text


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
def test_a_prompt_longer_than_the_models_context_is_recognised(server, caplog, flavour, mode):
    # The question is 5 words, and kb asks for up to KB_LLM_MAX_TOKENS (384) more.
    with server(ServerBehaviour(flavour=flavour, context=3)):
        pieces, error = answer(mode)
    assert pieces == []
    assert str(error) == llm.TOO_LONG
    assert "refused the prompt as longer than the model's context" in caplog.text
    assert "--max-model-len" in caplog.text and "KB_CONTEXT_TOKENS" in caplog.text


@pytest.mark.parametrize("mode", MODES)
def test_a_prompt_plus_answer_over_the_context_is_recognised_too(server, caplog, mode):
    with server(ServerBehaviour(flavour="vllm", context=100)):  # 5 words fit; 5 + 384 do not
        pieces, error = answer(mode)
    assert str(error) == llm.TOO_LONG
    assert "'max_tokens' or 'max_completion_tokens' is too large" in caplog.text


def test_the_model_server_check_sends_the_api_key(server, settings):
    settings.KB_LLM_API_KEY = "s3cret-key"
    with server(ServerBehaviour(flavour="vllm", api_key="s3cret-key")) as b:
        assert in_own_thread(async_to_sync(llm.amodel_server_online)) is True
    assert [(r["path"], r["authorization"]) for r in b.requests] == [("/v1/models", "Bearer s3cret-key")]


# --- Through kb's answering service -----------------------------------------------------------


@pytest.mark.django_db
def test_an_answer_through_kb_streams_from_vllm_with_its_served_name_and_key(server, settings):
    user, message = ask()
    settings.KB_LLM_MODEL, settings.KB_LLM_API_KEY = "", "s3cret-key"
    with server(ServerBehaviour(flavour="vllm", served=["qwen-kb"], api_key="s3cret-key", force_usage=True)) as b:
        events = read_stream(user, message)
    assert [data for event, data in events if event == "token"] == b.tokens
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE
    assert message.answer == "".join(b.tokens)
    assert [chat["model"] for chat in b.chats] == ["qwen-kb"]
    assert {r["authorization"] for r in b.requests} == {"Bearer s3cret-key"}


@pytest.mark.django_db
def test_an_error_inside_sglangs_stream_keeps_the_partial_answer_with_a_friendly_reason(server, caplog):
    user, message = ask()
    with server(ServerBehaviour(flavour="sglang", fail_after=2)) as b:
        read_stream(user, message)
    message.refresh_from_db()
    assert message.status == Message.Status.INCOMPLETE
    assert message.answer == "".join(b.tokens[:2])
    assert message.error == llm.BROKE_OFF_WITH_ERROR
    assert "illegal memory access" in caplog.text


# --- The settings' former names ---------------------------------------------------------------


def _llm_settings(env: dict) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KB_LLM_", "TGI_", "DJANGO_", "DATABASE_URL"))}
    code = "from django.conf import settings as s; print(s.KB_LLM_URL, s.KB_LLM_MODEL or '-')"
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env={**clean, **env},
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-2:]


def test_tgi_url_and_tgi_model_still_configure_the_model_server_when_the_new_names_are_unset():
    assert _llm_settings({"TGI_URL": "http://tgi.internal:80", "TGI_MODEL": "tgi"}) == ["http://tgi.internal:80", "tgi"]


def test_kb_llm_url_and_kb_llm_model_win_over_their_former_names():
    env = {"KB_LLM_URL": "http://vllm.internal:8000/v1", "KB_LLM_MODEL": "qwen-kb",
           "TGI_URL": "http://tgi.internal:80", "TGI_MODEL": "tgi"}  # fmt: skip
    assert _llm_settings(env) == ["http://vllm.internal:8000/v1", "qwen-kb"]
