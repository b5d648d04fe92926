"""Write the fuzzer's seed corpus: the regression corpus of the test suites.

Seeds are every message literal of the pg_regress ingest tests (sql/*.sql,
string literals that look like contract messages) and the hostile corpus of
test/integration/test_core.py, one file per message, named by its SHA-1.

Usage: make_seeds.py OUTDIR
"""

import hashlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sql_messages():
    """'...' literals of sql/*.sql that start like a JSON value."""
    out = []
    for name in sorted(os.listdir(os.path.join(ROOT, "sql"))):
        if not name.endswith(".sql"):
            continue
        with open(os.path.join(ROOT, "sql", name), encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"'((?:[^']|'')*)'", text):
            s = m.group(1).replace("''", "'")
            if s.lstrip()[:1] in ("{", "[", '"'):
                out.append(s.encode())
    return out


def hostile_messages():
    sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
    try:
        import test_core  # noqa: PLC0415 (the suite's own corpus)
    finally:
        sys.path.pop(0)
    return list(test_core.hostile_corpus())


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    seeds = set(sql_messages()) | set(hostile_messages())
    for s in seeds:
        path = os.path.join(outdir, hashlib.sha1(s).hexdigest())
        with open(path, "wb") as f:
            f.write(s)
    print(f"make_seeds: {len(seeds)} seeds in {outdir}")


if __name__ == "__main__":
    main()
