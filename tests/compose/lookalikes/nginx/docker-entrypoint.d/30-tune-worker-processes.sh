#!/bin/sh
# Restated from the official image, simplified: only with
# NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE set, set worker_processes in nginx.conf
# to the CPUs this container may use (the real script also reads cgroup CPU quotas).
set -e
ME=$(basename "$0")
[ -n "${NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE:-}" ] || exit 0
touch /etc/nginx/nginx.conf 2>/dev/null || { echo "$ME: error: can not modify /etc/nginx/nginx.conf (read-only file system?)"; exit 0; }
sed -i -E "s/^worker_processes\s+[^;]+;/worker_processes $(nproc);/" /etc/nginx/nginx.conf
