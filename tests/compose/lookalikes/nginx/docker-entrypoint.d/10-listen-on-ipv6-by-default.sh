#!/bin/sh
# Restated from the official image: add `listen [::]:8080;` to the image's own
# default.conf, but only when that file is still the packaged one, is writable,
# and the kernel has IPv6; anything else is left alone with an info line.
set -e
ME=$(basename "$0")
log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"; }
DEFAULT_CONF=/etc/nginx/conf.d/default.conf

if [ ! -f /proc/net/if_inet6 ]; then
    log "$ME: info: ipv6 not available"
    exit 0
fi
if [ ! -f "$DEFAULT_CONF" ]; then
    log "$ME: info: $DEFAULT_CONF is not a file or does not exist"
    exit 0
fi
if ! touch "$DEFAULT_CONF" 2>/dev/null; then
    log "$ME: info: can not modify $DEFAULT_CONF (read-only file system?)"
    exit 0
fi
if ! grep -q "listen       8080;" "$DEFAULT_CONF" || grep -q "listen  \[::\]:8080;" "$DEFAULT_CONF"; then
    log "$ME: info: $DEFAULT_CONF differs from the packaged version"
    exit 0
fi
sed -i -E 's,listen       8080;,listen       8080;\n    listen  [::]:8080;,' "$DEFAULT_CONF"
log "$ME: info: Enabled listen on IPv6 in $DEFAULT_CONF"
exit 0
