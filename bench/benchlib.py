"""Shared by the benchmarks: a private PostgreSQL cluster with iotpipe preloaded.

Each benchmark runs on a cluster of its own (scripts/pgcluster.sh), so that its
figures do not depend on what other clusters hold; with PGINSTALL set (see
scripts/pginstall.sh) it uses that private installation.
"""

import contextlib
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGCLUSTER = os.path.join(ROOT, "scripts", "pgcluster.sh")


@contextlib.contextmanager
def private_cluster(directory, port, dbname="bench", conf=()):
    """Start a fresh cluster in directory on port; yield its libpq DSN; stop it."""
    args = [PGCLUSTER, "start", directory, str(port), dbname]
    for line in conf:
        args += ["--conf", line]
    subprocess.run(args, check=True)
    try:
        yield f"host={directory} port={port} dbname={dbname} user=postgres"
    finally:
        subprocess.run([PGCLUSTER, "stop", directory])
