#!/usr/bin/env bash
# `npm run test:engines`: the suites that need a real storage engine, each engine started for them and stopped
# after (by pid). Today: S3 object storage on Ceph RGW. The PostgreSQL suites (test/engines/postgres.sh) join here:
# nest the scripts (`bash test/engines/postgres.sh bash test/engines/rgw.sh npx jest …`) to run both on one pair.
set -euo pipefail
cd "$(dirname "$0")/../.."
export NODE_OPTIONS=--experimental-vm-modules
bash test/engines/rgw.sh npx jest test/s3.test.ts "$@"
