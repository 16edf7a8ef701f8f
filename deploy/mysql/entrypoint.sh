#!/bin/sh
# Wrapper around the official mysql image's entrypoint (docker-entrypoint.sh):
# copy the TLS files from the Docker secrets to a directory the mysql user owns
# (secrets keep the host's owner and mode; the server key must be readable by mysqld).
set -eu

SECRETS=${MYSQL_TLS_SECRETS:-/run/secrets}
TLS=/etc/mysql/tls
install -d -o mysql -g mysql -m 0700 "$TLS"
install -o mysql -g mysql -m 0644 "$SECRETS/ca.crt" "$TLS/ca.crt"
install -o mysql -g mysql -m 0644 "$SECRETS/server.crt" "$TLS/server.crt"
install -o mysql -g mysql -m 0600 "$SECRETS/server.key" "$TLS/server.key"

exec docker-entrypoint.sh "$@"
