#!/bin/sh
# Builds PgBouncer's run-time files from secrets, then runs PgBouncer (never as root).
#
#   PGBOUNCER_AUTH_USERS  "user=/path/to/password-file ..." (space separated): the
#                         auth_file lines; passwords stay plain text in a 0600 file
#                         so that PgBouncer can log in to PostgreSQL with SCRAM
#   PGBOUNCER_TLS_DIR     where ca.crt, server.crt and server.key are (default /run/secrets)
#   PGBOUNCER_RUN_DIR     private directory for the files built here (default /run/pgbouncer)
#   PGBOUNCER_CONFIG      the configuration file (default /etc/pgbouncer/pgbouncer.ini)
set -eu

TLS_DIR=${PGBOUNCER_TLS_DIR:-/run/secrets}
RUN_DIR=${PGBOUNCER_RUN_DIR:-/run/pgbouncer}
CONFIG=${PGBOUNCER_CONFIG:-/etc/pgbouncer/pgbouncer.ini}

umask 077
mkdir -p "$RUN_DIR"
userlist="$RUN_DIR/userlist.txt"
: > "$userlist"
for entry in ${PGBOUNCER_AUTH_USERS:?set PGBOUNCER_AUTH_USERS to user=/path/to/password-file}; do
  user=${entry%%=*}
  file=${entry#*=}
  password=$(cat "$file")
  # auth_file syntax: "user" "password", a double quote written twice.
  printf '"%s" "%s"\n' \
    "$(printf '%s' "$user" | sed 's/"/""/g')" \
    "$(printf '%s' "$password" | sed 's/"/""/g')" >> "$userlist"
done
for name in ca.crt server.crt server.key; do
  cp "$TLS_DIR/$name" "$RUN_DIR/$name"
done
chmod 0600 "$RUN_DIR"/*

if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$RUN_DIR"
  exec setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$CONFIG"
fi
exec pgbouncer "$CONFIG"
