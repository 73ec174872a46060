#!/bin/sh
# Restated from the official image: render every *.template under
# NGINX_ENVSUBST_TEMPLATE_DIR (/etc/nginx/templates) into NGINX_ENVSUBST_OUTPUT_DIR
# (/etc/nginx/conf.d), keeping subdirectories, with envsubst limited to the variables
# that are set (optionally those matching NGINX_ENVSUBST_FILTER), so nginx's own
# $variables survive. An output directory this user cannot write is logged as an
# ERROR and nothing is rendered; the script still succeeds, so nginx then starts
# without those files, as with the real image. *.stream-template files go to
# NGINX_ENVSUBST_STREAM_OUTPUT_DIR, included from a stream block added to nginx.conf.
set -e
ME=$(basename "$0")
log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"; }

render() {  # render <suffix> <output dir>
    suffix=$1
    out_dir=$2
    find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
        relative=${template#"$template_dir/"}
        output="$out_dir/${relative%"$suffix"}"
        mkdir -p "$out_dir/$(dirname "$relative")"
        log "$ME: Running envsubst on $template to $output"
        envsubst "$defined_envs" < "$template" > "$output"
    done
}

template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
stream_suffix=${NGINX_ENVSUBST_STREAM_TEMPLATE_SUFFIX:-.stream-template}
stream_output_dir=${NGINX_ENVSUBST_STREAM_OUTPUT_DIR:-/etc/nginx/stream-conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null))

[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
    log "$ME: ERROR: $template_dir exists, but $output_dir is not writable"
    exit 0
fi
render "$suffix" "$output_dir"

if [ -n "$(find "$template_dir" -name "*$stream_suffix" -print -quit)" ]; then
    mkdir -p "$stream_output_dir"
    if [ ! -w "$stream_output_dir" ]; then
        log "$ME: ERROR: $template_dir exists, but $stream_output_dir is not writable"
        exit 0
    fi
    if ! grep -q -E '^\s*stream\s*\{' /etc/nginx/nginx.conf; then
        touch /etc/nginx/nginx.conf 2>/dev/null || { log "$ME: info: can not modify /etc/nginx/nginx.conf (read-only file system?)"; exit 0; }
        printf 'stream {\n  include %s/*.conf;\n}\n' "$stream_output_dir" >> /etc/nginx/nginx.conf
    fi
    render "$stream_suffix" "$stream_output_dir"
fi
exit 0
