# `make run` and `make test` each set up .venv on first use; CI (.ci/run) runs `make lint` then `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch. GPU users: see README ("Installing the CUDA build").
TORCH ?= torch==2.13.0
# Without its dependencies: see pyproject.toml and README ("Pretraining on a corpus").
LITDATA ?= litdata>=0.2.76,<0.3
ARGS ?=

.PHONY: run test lint bench bench-data clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "$(LITDATA)"
	touch $@

run: $(VENV)/.installed
	$(PY) scripts/run.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Speed against the book's code and Hugging Face transformers (same weights; see README, Performance).
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) scripts/bench.py $(ARGS)

# Corpus preparation and streaming throughput, peak memory (see README, Pretraining on a corpus).
bench-data: $(VENV)/.installed
	$(PY) scripts/bench_data.py $(ARGS)

clean:
	rm -rf $(VENV) outputs/* .pytest_cache
