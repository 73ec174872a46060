# Two commands for a fresh machine: `make run` and `make test`.
# Each sets itself up first (Debian packages when missing, venv, pinned packages).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup setup-dev unit integration bench clean

run: setup  ## the stack, natively, in the foreground (Ctrl-C stops it)
	$(PY) -m native.stack

test: setup-dev  ## every test: unit, container checks, integration on real processes
	$(PY) -m pytest

unit: setup-dev
	$(PY) -m pytest tests/unit

integration: setup-dev
	$(PY) -m pytest tests/integration

bench: setup-dev  ## the benchmark (minutes; not part of make test): bench/README.md
	$(PY) -m bench.run

setup:
	VENV=$(VENV) scripts/setup.sh

setup-dev:
	VENV=$(VENV) scripts/setup.sh --dev

clean:  ## remove the venv and the native run's data
	rm -rf $(VENV) .data
