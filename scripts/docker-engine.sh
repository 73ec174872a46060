#!/usr/bin/env bash
# Docker's engine for the compose test (tests/compose/), on Debian:
#   - docker.io (dockerd, containerd, runc) and debootstrap from the distribution;
#   - compose v2 and buildx: Debian sid's docker-compose / docker-buildx packages ship
#     them as plain static binaries; only those two files are unpacked into
#     /usr/libexec/docker/cli-plugins/ (this host's apt sources stay as they are);
#   - dockerd started when it is not answering (service script, else in the background).
# Re-running is cheap: each step is skipped when its result is already there.
set -euo pipefail
# shellcheck source=scripts/debian.sh
. "$(dirname "$0")/debian.sh"

PLUGINS=/usr/libexec/docker/cli-plugins
DOCKERD_LOG=/var/log/tpotserve-dockerd.log

need=()
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then debian_install "${need[@]}"; fi

if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
  echo "installing compose v2 and buildx (Debian sid's binaries) into $PLUGINS"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    > "$work/sources.list"
  apt_sid=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
           -o APT::Sandbox::User=root)
  apt-get "${apt_sid[@]}" update -qq
  (cd "$work" && apt-get "${apt_sid[@]}" download -qq docker-compose docker-buildx)
  mkdir -p "$PLUGINS"
  for deb in "$work"/docker-compose_*.deb "$work"/docker-buildx_*.deb; do
    dpkg-deb -x "$deb" "$work/unpacked"
  done
  install -m 0755 "$work/unpacked$PLUGINS/docker-compose" "$work/unpacked$PLUGINS/docker-buildx" "$PLUGINS/"
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd (log: $DOCKERD_LOG)"
  if ! service docker start >/dev/null 2>&1; then
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  fi
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not come up; see $DOCKERD_LOG" >&2; exit 1; }
fi
echo "docker: $(docker version -f '{{.Server.Version}}') engine, $(docker compose version --short) compose, buildx $(docker buildx version | awk '{print $2}')"
