#!/bin/sh
# `pip check` of a venv installed from the locks with --no-deps: fails on any missing or
# conflicting dependency except the one the locks make on purpose (tpot's `xgboost` is there
# as xgboost-cpu, the same module and version: the requirements.lock header says why).
# Used by services/Dockerfile and scripts/setup.sh; PYTHON is the venv's interpreter.
set -u
python=${PYTHON:-python}
report=$("$python" -m pip check 2>&1)
unexpected=$(printf '%s\n' "$report" | grep -v -e '^tpot [^ ]* requires xgboost, which is not installed\.$' \
  -e '^No broken requirements found\.$' -e '^$')
if [ -n "$unexpected" ]; then
  printf 'pip check: the locks miss what this Python needs:\n%s\n' "$unexpected" >&2
  exit 1
fi
