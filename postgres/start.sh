#!/bin/sh
# Starts PostgreSQL on the volume at $PGDATA. On the first start (an empty volume) it makes the cluster: the role
# and database `preview_gate`, whose password is POSTGRES_PASSWORD, reachable over the network by password only
# (scram-sha-256); the superuser `postgres` only through the container's own socket. POSTGRES_PASSWORD is read
# on that first start only: change the password later with ALTER ROLE (docs/operations.md).
set -eu

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # Blank counts as unset (compose.yaml's default is a space).
  if [ -z "$(printf '%s' "${POSTGRES_PASSWORD:-}" | tr -d '[:space:]')" ]; then
    echo "preview-gate-postgres: set POSTGRES_PASSWORD (in .env) for the first start: it becomes the password of the role preview_gate." >&2
    exit 1
  fi
  # The password goes through a file only this user can read, never a command line.
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "password_encryption = 'scram-sha-256'"
  } >> "$PGDATA/postgresql.conf"
  printf '%s\n' 'local all postgres peer' 'host preview_gate preview_gate all scram-sha-256' > "$PGDATA/pg_hba.conf"
  # Socket only while the role and database are made: nothing reaches the half-made cluster over the network.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -q -v ON_ERROR_STOP=1 -U postgres -d postgres -v pwfile="$pwfile" <<'SQL'
\set password `cat :pwfile`
CREATE ROLE preview_gate LOGIN PASSWORD :'password';
CREATE DATABASE preview_gate OWNER preview_gate;
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  rm -f "$pwfile"
  echo "preview-gate-postgres: made the cluster, the role and the database preview_gate" >&2
fi
exec postgres -D "$PGDATA"
