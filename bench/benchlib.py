"""Shared by the benchmarks: a private PostgreSQL cluster with iotpipe preloaded,
and the COPY baseline.

Each benchmark runs on a cluster of its own (scripts/pgcluster.sh), so that its
figures do not depend on what other clusters hold; with PGINSTALL set (see
scripts/pginstall.sh) it uses that private installation.
"""

import contextlib
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGCLUSTER = os.path.join(ROOT, "scripts", "pgcluster.sh")


@contextlib.contextmanager
def private_cluster(directory, port, dbname="bench", conf=(), keep=False):
    """Start a fresh cluster in directory on port; yield its libpq DSN; stop it
    (unless keep)."""
    args = [PGCLUSTER, "start", directory, str(port), dbname]
    for line in conf:
        args += ["--conf", line]
    subprocess.run(args, check=True)
    try:
        yield f"host={directory} port={port} dbname={dbname} user=postgres"
    finally:
        if not keep:
            subprocess.run([PGCLUSTER, "stop", directory])


@contextlib.contextmanager
def cluster_or_dsn(dsn, directory, port, dbname="bench", conf=()):
    """dsn when one is given (--dsn), else a private cluster for the run."""
    if dsn:
        yield dsn
    else:
        with private_cluster(directory, port, dbname, conf) as own:
            yield own


def copy_readings(conn, copy_data):
    """COPY text-format rows into iotpipe.readings; returns the seconds taken."""
    t = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy(
            "COPY iotpipe.readings (sensor_id, ts, temperature, humidity, location) FROM STDIN"
        ) as cp:
            step = 1 << 20
            for i in range(0, len(copy_data), step):
                cp.write(copy_data[i : i + step])
    return time.perf_counter() - t
