# Two commands for a fresh machine: `make run` and `make test`.
# Each sets itself up first (Debian packages when missing, venv, pinned packages).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup setup-dev unit integration bench clean backup restore

run: setup  ## the stack, natively, in the foreground (Ctrl-C stops it)
	$(PY) -m native

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

# Backups of the native run's store (docs/operations.md#backups): its DATA_DIR's models/,
# datasets/ and generated signing.key, as native/stack.py lays them out.
DATA_DIR ?= .data
BACKUP_DIR ?= backups
BACKUP_TIME = $(shell date -u +%Y%m%dT%H%M%SZ)

backup: setup  ## archive the model store, data sets and signing key to $(BACKUP_DIR)/tpotserve-<UTC time>.tar.gz (safe while running)
	$(PY) -m tpotserve.backup create --data-dir $(DATA_DIR) $(BACKUP_DIR)/tpotserve-$(BACKUP_TIME).tar.gz

restore: setup  ## restore BACKUP=path into $(DATA_DIR) (refuses a DATA_DIR that already holds models)
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=backups/tpotserve-<UTC time>.tar.gz" >&2; exit 2; }
	$(PY) -m tpotserve.backup restore --data-dir $(DATA_DIR) $(BACKUP)
