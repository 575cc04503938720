#!/usr/bin/env bash
# `npm run test:postgres`: the backend-neutral suites on PostgreSQL. Run inside test/engines/postgres.sh (which
# exports DATABASE_URL): every test server then gets a database of its own (test/helpers/server.ts).
#
# Left out, each for one reason:
#   unit, database, writer, request-context  SQLite or no database at all (pure functions, SQLite's own file)
#   browser, e2e, newcomer, hidden-nginx,    a real chromium, the container image or nginx's own behaviour:
#   changed-pages, container                 nothing there depends on the database engine
#   s3                                       needs Ceph RGW (test/engines/rgw.sh)
#   azure, oidc, setup, pull-mode,           GitHub, Key Vault and OIDC stand-ins around few, simple queries
#   upload-cli, adversarial, operations,     (the suites below cover those queries); left out to keep the run
#   process, manifest-load, sim              short on two cores (manifest-load and process are load tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${DATABASE_URL:-}" ]]; then echo "postgres-suites.sh: run it inside test/engines/postgres.sh" >&2; exit 2; fi
export NODE_OPTIONS=--experimental-vm-modules
suites=(
  postgres schema-parity migrate-to-postgres queue replicas replica-resume
  webhooks upload digest dashboard trust usage secrets robustness edges manifest-attacks cli cdn
)
paths=()
for suite in "${suites[@]}"; do paths+=("test/$suite.test.ts"); done
exec npx jest "${paths[@]}" "$@"
