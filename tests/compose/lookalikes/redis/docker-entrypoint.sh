#!/bin/sh
# The behaviour of the official redis image's entrypoint, restated:
#  - options or a *.conf as the first argument mean "redis-server with these";
#  - started as root to run redis-server: hand the working directory (/data) to the
#    redis user, then re-run this script as that user through gosu. gosu needs
#    CAP_SETUID and CAP_SETGID: without them it fails with
#    `error: failed switching to "redis": operation not permitted`;
#  - started as any other user (compose's `user:`), go straight on;
#  - tighten the default umask 0022 to 0077, then exec the command.
set -e

case "$1" in
    -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec gosu redis "$0" "$@"
fi

if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

exec "$@"
