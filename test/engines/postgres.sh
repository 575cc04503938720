#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for tests: a fresh cluster in a temporary directory, on 127.0.0.1 and a free port,
# trust authentication, stopped (by its pid) and removed when this script exits.
#
#   bash test/engines/postgres.sh <command…>   runs the command with DATABASE_URL exported, stops the server
#                                              after it, exits with the command's exit code
#   source test/engines/postgres.sh            (no command) starts it and exports DATABASE_URL in the calling
#                                              shell; the server stops when that shell exits
#
# Debian's initdb refuses to run as root: as root, the cluster belongs to the `postgres` user (runuser).
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
if [[ ! -x "$PG_BIN/initdb" ]]; then
  echo "postgres.sh: installing postgresql-15 (no $PG_BIN/initdb)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2
fi

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/preview-gate-pg.XXXXXX")
chmod 700 "$pg_dir"
if [[ $(id -u) -eq 0 ]]; then chown postgres: "$pg_dir"; fi
pg_pid=

stop_postgres() {
  # The postmaster's own pid (as root, $pg_pid is runuser's, which does not pass signals on).
  local server_pid
  server_pid=$(head -1 "$pg_dir/data/postmaster.pid" 2>/dev/null || true)
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    # SIGINT: PostgreSQL's "fast" shutdown (ends sessions, does not wait for clients to disconnect).
    kill -INT "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if [[ -n "$pg_pid" ]]; then wait "$pg_pid" 2>/dev/null || true; fi
  rm -rf "$pg_dir"
}
trap stop_postgres EXIT

# A free port: the kernel picks one for a socket bound to port 0.
port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")

as_owner "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1 ||
  { cat "$pg_dir/initdb.log" >&2; exit 1; }

# Tests open many databases side by side (one per test server) and drop them at the end; durability is not
# wanted from a throwaway cluster, speed is.
as_owner "$PG_BIN/postgres" -D "$pg_dir/data" -h 127.0.0.1 -p "$port" -k "$pg_dir" \
  -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  >"$pg_dir/server.log" 2>&1 &
pg_pid=$!

for _ in $(seq 1 300); do
  if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then break; fi
  if ! kill -0 "$pg_pid" 2>/dev/null; then cat "$pg_dir/server.log" >&2; exit 1; fi
  sleep 0.1
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || { echo "postgres.sh: the server did not answer" >&2; cat "$pg_dir/server.log" >&2; exit 1; }

export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "DATABASE_URL=$DATABASE_URL" >&2

if [[ $# -gt 0 ]]; then
  set +e
  "$@"
  status=$?
  set -e
  exit "$status"
fi
