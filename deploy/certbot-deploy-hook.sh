#!/bin/sh
# certbot --deploy-hook: runs after each successful issue or renewal (docs/deploy.md).
#
# Copies the certificate chain and key from certbot's lineage ($RENEWED_LINEAGE,
# e.g. /etc/letsencrypt/live/api.example.com) into deploy/tls/, which the nginx
# container mounts read-only at /etc/nginx/tls. Copies rather than mounting
# /etc/letsencrypt because certbot keeps keys root-only (0700 directories) and
# nginx runs as uid 101 in its image; the key here is 0600 and owned by 101.
# Each file is written beside its final name and renamed over it, so nginx never
# reads half a key; then nginx reloads: new connections get the new certificate,
# open ones finish on the old, nothing is dropped.
#
#   TLS_DIR          where to put the files (default: deploy/tls beside this script)
#   TLS_OWNER        owner of the key (default 101:101, nginx in its image)
#   RELOAD_COMMAND   how to reload nginx (default: docker compose exec -T nginx nginx -s reload)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE; run this as certbot --deploy-hook}"
tls_dir=${TLS_DIR:-$here/tls}
owner=${TLS_OWNER:-101:101}
reload=${RELOAD_COMMAND:-docker compose --project-directory "$here/.." exec -T nginx nginx -s reload}

install -d -m 0755 "$tls_dir"
install -m 0644 "$RENEWED_LINEAGE/fullchain.pem" "$tls_dir/.fullchain.pem.new"
install -m 0600 -o "${owner%%:*}" -g "${owner##*:}" "$RENEWED_LINEAGE/privkey.pem" "$tls_dir/.privkey.pem.new"
mv -f "$tls_dir/.fullchain.pem.new" "$tls_dir/fullchain.pem"
mv -f "$tls_dir/.privkey.pem.new" "$tls_dir/privkey.pem"
echo "tpotserve: certificate from $RENEWED_LINEAGE installed in $tls_dir; reloading nginx"
sh -c "$reload"
