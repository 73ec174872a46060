#!/usr/bin/env bash
# Sets this machine up for the native run (and, with --dev, for the tests):
#   - Debian packages when missing: redis-server and nginx (+ docker-compose
#     v1 for --dev, used only to validate docker-compose.yml offline, and
#     cloud-init and systemd-analyze, used only to validate
#     deploy/cloud-init/user-data.yaml)
#   - with --dev, Docker's engine, compose v2 and buildx (scripts/docker-engine.sh),
#     dockerd running, for the compose test
#   - a venv at $VENV (default .venv) with the pinned packages of
#     requirements.lock (+ requirements-dev.lock) and the project's packages.
# Re-running is cheap: the venv is rebuilt only when a lock file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/debian.sh
. scripts/debian.sh

dev=0
[ "${1:-}" = "--dev" ] && dev=1
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# --- Debian packages ---------------------------------------------------------
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ "$dev" = 1 ]; then
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  # The web page's end-to-end tests drive Debian's Chromium through Playwright.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # A real Prometheus scrapes /metrics in the monitoring smoke test.
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  # `cloud-init schema` validates the VM provisioning file offline, and
  # `systemd-analyze verify` the unit it installs (nothing is started).
  command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
fi
if [ "${#need[@]}" -gt 0 ]; then
  if [[ " ${need[*]} " == *" cloud-init "* ]] && [ "$(id -u)" = 0 ]; then
    # Here cloud-init is only a validator: it must never configure this machine.
    # The package enables its boot services (nothing starts on install); this
    # file, checked by its systemd generator, keeps them out of every boot.
    # Only written when cloud-init was absent, so a cloud VM's own is untouched.
    mkdir -p /etc/cloud
    touch /etc/cloud/cloud-init.disabled
  fi
  debian_install "${need[@]}"
  # Debian's packages may start system services on install; the stack runs its own.
  if command -v service >/dev/null 2>&1; then
    service redis-server stop >/dev/null 2>&1 || true
    service nginx stop >/dev/null 2>&1 || true
    service prometheus stop >/dev/null 2>&1 || true
  fi
  # Without systemd, sysvinit would run cloud-init's own boot scripts: off too.
  if [[ " ${need[*]} " == *" cloud-init "* ]] && command -v update-rc.d >/dev/null 2>&1; then
    for script in cloud-init-local cloud-init cloud-config cloud-final; do
      update-rc.d "$script" disable >/dev/null 2>&1 || true
    done
  fi
fi

# Docker's engine, compose v2 and buildx for the compose test (tests/compose/):
# installed when missing and dockerd started when it is not answering.
if [ "$dev" = 1 ]; then
  scripts/docker-engine.sh
fi

# --- Python ------------------------------------------------------------------
locks=(requirements.lock)
[ "$dev" = 1 ] && locks+=(requirements-dev.lock)
stamp="$VENV/.installed-$(cat "${locks[@]}" shared/pyproject.toml services/*/pyproject.toml cli/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
reqs=()
for lock in "${locks[@]}"; do reqs+=(-r "$lock"); done
# A venv made from older locks first loses what neither lock has any more (xgboost's CUDA
# build shares its module files with xgboost-cpu: installing one over the other breaks both).
stale=$("$VENV/bin/python" -m pip freeze -q --exclude-editable 2>/dev/null \
  | grep -vxFf <(grep -hv '^#' requirements.lock requirements-dev.lock) | sed 's/[=@ ].*//' || true)
if [ -n "$stale" ]; then
  # shellcheck disable=SC2086 # one package name per word
  "$VENV/bin/python" -m pip uninstall -q -y $stale
fi
# --no-deps: the locks are complete; tpot's `xgboost` is pinned as xgboost-cpu (the lock's header).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${reqs[@]}"
# Our own packages, editable, without touching the pinned set.
packages=(-e shared -e services/api -e services/trainer)
[ -f cli/pyproject.toml ] && packages+=(-e cli)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${packages[@]}"
PYTHON="$VENV/bin/python" sh scripts/pip-check.sh
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "venv ready: $VENV"
