# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install only when the package metadata changes, so a second `make test` starts at once.
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/digits
CONFIG ?= configs/digits.py

.PHONY: install test test-fast test-reproduction lint format train clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# With a C++ compiler the [cpu] extra (oneDNN) comes too, so conv_impl="onednn" and its kernel tests
# run; without one they are skipped, as the kernel is compiled on first use.
$(STAMP): pyproject.toml setup.py | $(PY)
	if command -v g++ >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -e '.[test,cpu]'; \
	else \
	  $(PY) -m pip install -q -e '.[test]'; \
	fi
	touch $(STAMP)

# CI runs this target: style and lint first (seconds), then the suite. Most tests are one
# single-threaded process at a time, so one pytest worker per core halves the wall time; a file's
# tests stay on one worker so its module fixtures (shared training runs) run once, and files go
# out longest first (tests/conftest.py orders them).
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder
test: lint
	$(PYTEST)

# The unit tier, for while you work: no slow, multi-process or end-to-end tests (pyproject's
# markers); `make test` stays the one that must pass.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not multiprocess and not e2e"

# The committed reproduction's rerun check (tests/test_reproduction.py): minutes of CPU, so not in
# `make test`.
test-reproduction: $(STAMP)
	RESNET_JAX_REPRODUCTION=1 $(PY) -m pytest -q -s tests/test_reproduction.py

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
