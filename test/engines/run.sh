#!/usr/bin/env bash
# `npm run test:engines`: everything that needs a real storage engine, each engine started for it and stopped after
# (by pid). PostgreSQL 15: the backend-neutral suites (postgres-suites.sh), then the 3-replica simulation on it.
# Ceph RGW: the S3 object store, migrate-storage, and serving from the bucket through real nginx. Then both engines
# at once: the bucket's suites on PostgreSQL, and the simulation on PostgreSQL with its builds in RGW (SIM_STORAGE=s3). Each script installs its engine's
# Debian packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export NODE_OPTIONS=--experimental-vm-modules
bash test/engines/postgres.sh bash -c 'bash test/engines/postgres-suites.sh && npx jest -c test/sim/jest.config.js --runInBand'
bash test/engines/rgw.sh npx jest test/s3.test.ts test/s3-store.test.ts test/s3-serving.test.ts
# Both engines at once: the bucket's suites again with their rows in PostgreSQL, then the simulation.
bash test/engines/postgres.sh bash test/engines/rgw.sh bash -c 'npx jest test/s3-store.test.ts test/s3-serving.test.ts && SIM_STORAGE=s3 npx jest -c test/sim/jest.config.js --runInBand'
