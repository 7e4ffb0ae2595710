# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install only when the package metadata changes, so a second `make test` starts at once.
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/digits
CONFIG ?= configs/digits.py

.PHONY: install test train clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

train: $(STAMP)
	$(PY) -m resnet_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
