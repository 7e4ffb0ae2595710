# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install only when the package metadata changes, so a second `make test` starts at once.
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/digits
CONFIG ?= configs/digits.py

.PHONY: install test lint format train clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# CI runs this target: style and lint first (seconds), then the suite. Most tests are one
# single-threaded process at a time, so one pytest worker per core halves the wall time; a file's
# tests stay on one worker so its module fixtures (shared training runs) run once.
test: lint
	$(PY) -m pytest -q -n auto --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

train: $(STAMP)
	$(PY) -m resnet_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
