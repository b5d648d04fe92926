#!/usr/bin/env bash
# make test: build, install, start a throwaway cluster, run every suite
# (pg_regress, pgTAP, integration), tear down, print "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# a private PostgreSQL tree with this build of iotpipe: the system-wide
# installation is neither needed nor touched
export PGINSTALL=${PGINSTALL:-$ROOT/build/pg}
scripts/pginstall.sh "$PGINSTALL" >/dev/null

export IOTPIPE_TEST_DIR=${IOTPIPE_TEST_DIR:-/tmp/iotpipe-test}
export IOTPIPE_TEST_PORT=${IOTPIPE_TEST_PORT:-55432}
export IOTPIPE_TEST_DB=iotpipe_regress
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/run_tests.py" "$@"
