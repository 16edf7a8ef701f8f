#!/bin/sh
# Wrapper around the official postgres image's entrypoint (docker-entrypoint.sh).
#
# 1. TLS files: Docker secrets are mounted with the host's owner and mode, and
#    PostgreSQL refuses a key it does not own or that others can read. Copy them
#    (as root, before the image drops to the postgres user) to a private directory.
# 2. PG_ROLE=replica: on first start (empty data directory), clone the primary
#    with pg_basebackup over TLS (verify-full) into a streaming replica.
set -eu

SECRETS=${PG_TLS_SECRETS:-/run/secrets}
TLS=/var/lib/postgresql/tls
install -d -o postgres -g postgres -m 0700 "$TLS"
install -o postgres -g postgres -m 0644 "$SECRETS/ca.crt" "$TLS/ca.crt"
install -o postgres -g postgres -m 0644 "$SECRETS/server.crt" "$TLS/server.crt"
install -o postgres -g postgres -m 0600 "$SECRETS/server.key" "$TLS/server.key"

if [ "${PG_ROLE:-primary}" = replica ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${PG_PRIMARY_HOST:?set PG_PRIMARY_HOST to the primary's host name}"
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  echo "multipool example: cloning ${PG_PRIMARY_HOST} into a streaming replica"
  PGPASSWORD="$(cat "$SECRETS/replication_password")" \
    gosu postgres pg_basebackup \
      --pgdata="$PGDATA" \
      --write-recovery-conf \
      --wal-method=stream \
      --checkpoint=fast \
      --slot="${PG_REPLICATION_SLOT:-replica1}" \
      --dbname="host=${PG_PRIMARY_HOST} port=5432 user=replicator sslmode=verify-full sslrootcert=$TLS/ca.crt"
fi

exec docker-entrypoint.sh "$@"
