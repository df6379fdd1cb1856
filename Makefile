# `make run` and `make test` each set up .venv on first use; CI (.ci/run) runs `make lint` then `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch. GPU users: see docs/install.md ("The CUDA build of PyTorch").
TORCH ?= torch==2.13.0
# The exact versions the suite passed with (`make lock` writes it); CONSTRAINTS= installs the newest instead.
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# Without its dependencies: see pyproject.toml and docs/install.md ("litdata without its dependencies").
LITDATA ?= litdata>=0.2.76,<0.3
ARGS ?=

.PHONY: run test lint bench bench-finetune bench-data lock clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"  # the build (and index) you chose; its version is pinned below
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(PIP_CONSTRAINTS) "$(LITDATA)"
	touch $@

run: $(VENV)/.installed
	$(PY) scripts/run.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Speed against the book's code and Hugging Face transformers (same weights; see docs/performance.md).
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[dev,bench]"
	touch $@

# Re-resolve every dependency to its newest allowed version in a scratch venv and pin the result in
# constraints.txt (torch without its +cpu/+cuXXX tag, so either build satisfies the pin). Then run
# `make clean test` and commit constraints.txt if the suite passes.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev,bench]"
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps "$(LITDATA)"
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable > $(LOCK_VENV)/freeze.txt
	(echo '# Pinned versions for every make install (make lock rewrites this file; see the Makefile).'; \
	 sed -E 's/^(torch==[^+]+)\+.*/\1/' $(LOCK_VENV)/freeze.txt) > constraints.txt
	rm -rf $(LOCK_VENV)

bench: $(VENV)/.bench-installed
	$(PY) scripts/bench.py $(ARGS)
	$(PY) scripts/bench_finetune.py $(filter --quick,$(ARGS))  # the fine-tuning rows (chapter 6 / appendix E)
	$(PY) scripts/bench_lab.py $(filter --quick,$(ARGS))  # the architecture lab's caches (issue 25)
	$(PY) scripts/bench_families.py $(filter --quick,$(ARGS))  # the model families against transformers (issue 26)

# One fine-tuning step (chapter 6 / appendix E shapes): gpt_lab's LoRA beside transformers + peft, fp32 and bf16.
bench-finetune: $(VENV)/.bench-installed
	$(PY) scripts/bench_finetune.py $(ARGS)

# Corpus preparation and streaming throughput, peak memory (see docs/corpus.md).
bench-data: $(VENV)/.installed
	$(PY) scripts/bench_data.py $(ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) outputs/* .pytest_cache
