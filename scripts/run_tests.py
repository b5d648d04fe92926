#!/usr/bin/env python3
"""Run every iotpipe test suite against one throwaway cluster and tally.

Suites, in order: lint, fuzz (scripts/fuzz.sh: the message parser under
libFuzzer), pg_regress (sql/ + expected/), pgTAP (test/pgtap/*.sql via
pg_prove), integration tests (test/integration, pytest; these start Kafka and
a browser when they need them).  Prints one line per suite and, last,
"N passed, N failed"; exits non-zero on any failure.

Usage: run_tests.py [--suite lint|fuzz|regress|pgtap|integration]... [-k PYTEST_EXPR]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.environ.get("IOTPIPE_TEST_DIR", "/tmp/iotpipe-test")
PORT = os.environ.get("IOTPIPE_TEST_PORT", "55432")
DB = os.environ.get("IOTPIPE_TEST_DB", "iotpipe_regress")
PGBIN = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
PGXS = subprocess.check_output(["pg_config", "--pgxs"], text=True).strip()
PG_REGRESS = os.path.join(os.path.dirname(PGXS), "../test/regress/pg_regress")


def sh(args, **kw):
    return subprocess.run(args, cwd=ROOT, **kw)


def start_cluster():
    sh([os.path.join(ROOT, "scripts/pgcluster.sh"), "start", DIR, PORT, DB], check=True)
    psql = [
        os.path.join(PGBIN, "psql"),
        "-h",
        DIR,
        "-p",
        PORT,
        "-U",
        "postgres",
        "-d",
        DB,
        "-qX",
    ]
    sh(psql + ["-c", "CREATE EXTENSION IF NOT EXISTS pgtap"], check=True)


def stop_cluster():
    sh([os.path.join(ROOT, "scripts/pgcluster.sh"), "stop", DIR, "immediate"])


def run_regress():
    tests = sorted(
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(ROOT, "sql", "*.sql"))
    )
    if not tests:
        return 0, 0
    out = sh(
        [
            PG_REGRESS,
            "--inputdir=.",
            "--use-existing",
            f"--dbname={DB}",
            f"--host={DIR}",
            f"--port={PORT}",
            "--user=postgres",
            f"--bindir={PGBIN}",
        ]
        + tests,
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    print(text)
    passed = len(re.findall(r"^(?:ok|test) .*\.\.\. ok|^ok \d+\s", text, re.M))
    failed = len(re.findall(r"\.\.\. FAILED|^not ok \d+", text, re.M))
    if out.returncode != 0 and failed == 0:
        failed = 1
    if failed and os.path.exists(os.path.join(ROOT, "regression.diffs")):
        with open(os.path.join(ROOT, "regression.diffs")) as f:
            print(f.read()[:20000])
    return passed, failed


def run_pgtap():
    files = sorted(glob.glob(os.path.join(ROOT, "test", "pgtap", "*.sql")))
    if not files:
        return 0, 0
    out = sh(
        ["pg_prove", "-v", "-h", DIR, "-p", PORT, "-U", "postgres", "-d", DB] + files,
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    print(text)
    passed = len(re.findall(r"^ok \d+", text, re.M))
    failed = len(re.findall(r"^not ok \d+", text, re.M))
    if out.returncode != 0 and failed == 0:
        failed = 1
    return passed, failed


def run_integration(expr):
    if not glob.glob(os.path.join(ROOT, "test", "integration", "test_*.py")):
        return 0, 0
    junit = os.path.join(DIR, "junit.xml")
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "test/integration",
    ]
    if expr:
        args += ["-k", expr]
    out = sh(args)
    passed = failed = 0
    if os.path.exists(junit):
        with open(junit) as f:
            x = f.read()
        m = re.search(
            r'<testsuite [^>]*errors="(\d+)" failures="(\d+)" skipped="(\d+)" tests="(\d+)"',
            x,
        )
        if m:
            errors, failures, skipped, tests = map(int, m.groups())
            failed = errors + failures + skipped  # a skipped test is not a pass
            passed = tests - failures - errors - skipped
    if out.returncode not in (0, 5) and failed == 0:
        failed = 1
    return passed, failed


def run_lint():
    """C without warnings, ruff check + format, shell syntax: one test."""
    out = sh([os.path.join(ROOT, "scripts/lint.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-5000:] + out.stderr[-5000:])
        return 0, 1
    return 1, 0


def run_fuzz():
    """The message parser under libFuzzer + ASan/UBSan for a short run: one test."""
    secs = os.environ.get("IOTPIPE_FUZZ_SECONDS", "45")
    out = sh(
        [os.path.join(ROOT, "scripts/fuzz.sh"), secs], capture_output=True, text=True
    )
    print(out.stdout[-5000:] + out.stderr[-5000:])
    return (1, 0) if out.returncode == 0 else (0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--suite",
        action="append",
        choices=["lint", "fuzz", "regress", "pgtap", "integration"],
    )
    ap.add_argument("-k", dest="expr")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    a = ap.parse_args()
    suites = a.suite or ["lint", "fuzz", "regress", "pgtap", "integration"]

    t0 = time.time()
    results = {}
    if "lint" in suites:
        results["lint"] = run_lint()
    if "fuzz" in suites:
        results["fuzz"] = run_fuzz()
    start_cluster()
    try:
        if "regress" in suites:
            results["pg_regress"] = run_regress()
        if "pgtap" in suites:
            results["pgTAP"] = run_pgtap()
        if "integration" in suites:
            results["integration"] = run_integration(a.expr)
    finally:
        if not a.keep:
            stop_cluster()
    total_p = sum(p for p, _ in results.values())
    total_f = sum(f for _, f in results.values())
    print()
    for name, (p, f) in results.items():
        print(f"{name}: {p} passed, {f} failed")
    print(f"time: {time.time() - t0:.0f} s")
    print(f"{total_p} passed, {total_f} failed")
    sys.exit(1 if total_f else 0)


if __name__ == "__main__":
    main()
