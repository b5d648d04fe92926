#!/usr/bin/env bash
# Lint: C builds without warnings (-Wall -Wextra -Werror), Python passes
# ruff check and ruff format --check, shell scripts parse.
set -euo pipefail
cd "$(dirname "$0")/.."
rc=0
PY_DIRS=(bench dashboard scripts test)
.venv/bin/ruff check "${PY_DIRS[@]}" || rc=1
.venv/bin/ruff format --check "${PY_DIRS[@]}" || rc=1
for f in scripts/*.sh test/kafka/*.sh dashboard/*.sh docker/*.sh .ci/run; do
  [ -f "$f" ] && { bash -n "$f" || rc=1; }
done
# module shape: no include circles, no C file over 1,000 lines, one header per module
.venv/bin/python scripts/check_modules.py || rc=1
# PG_CPPFLAGS has -Wall -Wextra -Werror: any warning fails the build
make -s with_llvm=no || rc=1
exit $rc
