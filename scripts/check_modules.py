#!/usr/bin/env python3
"""Module shape of src/: part of `make lint`.

A module is src/<name>.c with its header src/<name>.h (the entry point
src/iotpipe.c has none; src/iotpipe.h holds only shared limits).  Fails on:
  - an include circle between modules (a.c/a.h includes b.h and b's files,
    directly or through others, include a.h),
  - a C file over MAX_LINES lines,
  - a module without its own header, or a header without its module.
Prints the module table (lines of .c and .h, what each includes) with -v.
"""

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
MAX_LINES = 1000
ENTRY = "iotpipe"  # _PG_init: wires the modules, has no header of its own
INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_]+)\.h"', re.M)


def main():
    verbose = "-v" in sys.argv
    cfiles = {os.path.basename(p)[:-2]: p for p in glob.glob(os.path.join(SRC, "*.c"))}
    hfiles = {os.path.basename(p)[:-2]: p for p in glob.glob(os.path.join(SRC, "*.h"))}
    problems = []
    deps = {}
    lines = {}
    for mod in sorted(set(cfiles) | set(hfiles)):
        d = set()
        n = {}
        for kind, files in (("c", cfiles), ("h", hfiles)):
            if mod in files:
                text = open(files[mod]).read()
                n[kind] = text.count("\n")
                d |= set(INCLUDE.findall(text))
        d.discard(mod)
        d.discard(ENTRY)  # iotpipe.h: limits only, no module behind it
        deps[mod] = {x for x in d if x in hfiles}
        lines[mod] = n
        if mod in cfiles and mod not in hfiles and mod != ENTRY:
            problems.append(f"src/{mod}.c has no header src/{mod}.h")
        if mod in hfiles and mod not in cfiles and mod != ENTRY:
            problems.append(f"src/{mod}.h has no module src/{mod}.c")
        if n.get("c", 0) > MAX_LINES:
            problems.append(f"src/{mod}.c has {n['c']} lines (at most {MAX_LINES})")

    # include circles: depth-first search for back edges
    state = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for x in sorted(deps.get(m, ())):
            if state.get(x) == 1:
                cyc = stack[stack.index(x) :] + [x]
                problems.append("include circle: " + " -> ".join(cyc))
            elif x not in state:
                visit(x)
        stack.pop()
        state[m] = 2

    for m in sorted(deps):
        if m not in state:
            visit(m)

    if verbose:
        print(f"{'module':<16} {'.c':>6} {'.h':>5}  includes")
        for m in sorted(deps):
            c = lines[m].get("c", "")
            h = lines[m].get("h", "")
            print(f"{m:<16} {c!s:>6} {h!s:>5}  {' '.join(sorted(deps[m]))}")
    for p in problems:
        print("check_modules: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
