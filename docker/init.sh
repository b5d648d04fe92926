#!/usr/bin/env bash
# The compose "init" step: wait for PostgreSQL, then run init.sql once.
# Connection from the libpq environment (PGHOST, PGUSER, PGPASSWORD, PGDATABASE).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
for _ in $(seq 1 120); do
  if pg_isready -q; then break; fi
  sleep 1
done
psql -v ON_ERROR_STOP=1 -X -q -f "$HERE/init.sql"
echo "iotpipe: extension, rules, Kafka source and simulator are set up; dashboard on http://localhost:8501/"
