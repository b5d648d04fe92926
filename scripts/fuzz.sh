#!/usr/bin/env bash
# The message parser (src/jsonmsg.c) under libFuzzer with AddressSanitizer and
# UndefinedBehaviorSanitizer.  Seeds: the regression corpus (test/fuzz/make_seeds.py).
#
#   scripts/fuzz.sh [SECONDS]     build, then fuzz for SECONDS (default 60)
#
# Prints libFuzzer's final statistics and a last line
#   fuzz: N executions in S s, 0 crashes
# and exits non-zero on a crash, a leak or a broken invariant (the input is
# kept in build/fuzz/ as crash-* / leak-*; rerun it: build/fuzz/fuzz_jsonmsg FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
OUT=build/fuzz
CC=${FUZZ_CC:-clang-14}
mkdir -p "$OUT/corpus" "$OUT/seeds"

PGINC=$(pg_config --includedir-server)
PGLIB=$(pg_config --pkglibdir)
[ -f "$PGLIB/libpgcommon.a" ] || PGLIB=$(pg_config --libdir)
bin=$OUT/fuzz_jsonmsg
if [ ! -x "$bin" ] || [ -n "$(find src/jsonmsg.c src/jsonmsg.h src/iotpipe.h test/fuzz -newer "$bin" 2>/dev/null | head -1)" ]; then
  "$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Wall -Wextra -Werror -Wno-unused-parameter -Wno-ignored-attributes -Wno-sign-compare \
    -Wno-missing-field-initializers \
    -I src -I test/fuzz -I "$PGINC" -DIOTPIPE_VERSION='"fuzz"' \
    test/fuzz/fuzz_jsonmsg.c test/fuzz/pgshim.c src/jsonmsg.c \
    "$PGLIB/libpgcommon.a" "$PGLIB/libpgport.a" -lm -o "$bin"
fi

PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" test/fuzz/make_seeds.py "$OUT/seeds"

log=$OUT/fuzz.log
touch "$log.start"
t0=$(date +%s)
set +e
( cd "$OUT" && ./fuzz_jsonmsg -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
    -max_len=70000 -dict=../../test/fuzz/json.dict -print_final_stats=1 \
    corpus seeds ) >"$log" 2>&1
rc=$?
set -e
grep -E '^(stat::|#[0-9]+ +DONE|INFO: seed corpus)' "$log" || true
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
secs=$(( $(date +%s) - t0 ))
crashes=$(find "$OUT" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) -newer "$log.start" 2>/dev/null | wc -l || true)
if [ $rc -ne 0 ]; then
  tail -40 "$log"
  echo "fuzz: FAILED (libFuzzer exit $rc) after ${execs:-?} executions"
  exit 1
fi
echo "fuzz: ${execs:-0} executions in ${secs:-?} s, ${crashes:-0} crashes"
