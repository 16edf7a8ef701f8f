#!/bin/sh
# Runs once, when the primary's data directory is initialized (as the postgres user).
# Creates the application role and database, the replication role and the
# replica's physical replication slot. Passwords come from Docker secrets.
# (The image may source this file instead of running it: no "exit", no "set".)

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="$(cat /run/secrets/app_db_password)" \
  -v replication_password="$(cat /run/secrets/replication_password)" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'replication_password';
CREATE DATABASE app OWNER app;
SELECT pg_create_physical_replication_slot('replica1');
SQL
