#!/usr/bin/env bash
# make test: build, install, start a throwaway cluster, run every suite
# (pg_regress, pgTAP, integration), tear down, print "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

make -s with_llvm=no
$SUDO make -s with_llvm=no install >/dev/null

export IOTPIPE_TEST_DIR=${IOTPIPE_TEST_DIR:-/tmp/iotpipe-test}
export IOTPIPE_TEST_PORT=${IOTPIPE_TEST_PORT:-55432}
export IOTPIPE_TEST_DB=iotpipe_regress
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/run_tests.py" "$@"
