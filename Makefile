# Two commands do all the set-up: `make demo` runs the main job, `make test` the test suite.
# Each creates .venv (plain pip: torch comes from the machine's local wheels) if it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# One thread per process: two busy threads on two cores stall each other (environment notes).
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test lint bench install

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) jobs/pipeline.py --config configs/minicanvas/study.yaml $(ARGS)

# Tests that start their own Ray head run in a second pytest process: next to the shared in-process
# cluster of the first, their head's job agent never registers and later drivers lose the cluster.
test: $(VENV)/.installed
	$(PY) -m pytest -m "not own_ray_head" $(ARGS)
	$(PY) -m pytest -m own_ray_head $(ARGS)

# Lint and format check (ruff) and type check (mypy) over the library; CI runs this before the tests.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check saeuron tests jobs tune benchmarks
	$(VENV)/bin/ruff format --check saeuron tests jobs tune benchmarks
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/sae_step.py $(ARGS)
