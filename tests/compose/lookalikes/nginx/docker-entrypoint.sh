#!/bin/sh
# The behaviour of the official nginx images' /docker-entrypoint.sh, restated: when
# the command is nginx (or nginx-debug) and /docker-entrypoint.d/ holds files, go
# through them in version order, sourcing readable *.envsh files and running
# executable *.sh files (anything else is logged and skipped), then exec the
# command. The scripts run in one pipeline subshell: what an .envsh exports reaches
# the scripts after it, not nginx; a failing one stops the container (set -e).
# NGINX_ENTRYPOINT_QUIET_LOGS silences the messages.
set -e

log() {
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"
}

if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    if find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f -print -quit 2>/dev/null | read -r _; then
        log "$0: /docker-entrypoint.d/ is not empty, will attempt to perform configuration"
        log "$0: Looking for shell scripts in /docker-entrypoint.d/"
        find /docker-entrypoint.d/ -follow -type f -print | sort -V | while read -r script; do
            case "$script" in
                *.envsh)
                    if [ -r "$script" ]; then
                        log "$0: Sourcing $script"
                        . "$script"
                    else
                        log "$0: Ignoring $script, not readable"
                    fi
                    ;;
                *.sh)
                    if [ -x "$script" ]; then
                        log "$0: Launching $script"
                        "$script"
                    else
                        log "$0: Ignoring $script, not executable"
                    fi
                    ;;
                *) log "$0: Ignoring $script" ;;
            esac
        done
        log "$0: Configuration complete; ready for start up"
    else
        log "$0: No files found in /docker-entrypoint.d/, skipping configuration"
    fi
fi

exec "$@"
