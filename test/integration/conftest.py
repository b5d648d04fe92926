"""Shared fixtures for iotpipe integration tests.

The suite runs against the throwaway cluster started by scripts/run_tests.py
(IOTPIPE_TEST_DIR / IOTPIPE_TEST_PORT / IOTPIPE_TEST_DB).  Helpers:

- ``db``: an autocommit psycopg connection as postgres to the test database.
- ``connect()``: another connection (e.g. a LISTEN client).
- ``poll(fn, timeout)``: call fn until it returns a truthy value or fail.
- ``restart_server(mode)``: pg_ctl restart (fast/immediate) and wait for it.
- ``kafka``: a real single-node Kafka broker, started once per session on
  first use (test/kafka/kafka_harness.py).
"""

import os
import subprocess
import sys
import time

import psycopg
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.environ.get("IOTPIPE_TEST_DIR", "/tmp/iotpipe-test")
PORT = int(os.environ.get("IOTPIPE_TEST_PORT", "55432"))
DB = os.environ.get("IOTPIPE_TEST_DB", "iotpipe_regress")
sys.path.insert(0, os.path.join(ROOT, "test", "kafka"))


def conninfo(dbname=DB, user="postgres"):
    return f"host={DIR} port={PORT} dbname={dbname} user={user}"


def connect(dbname=DB, user="postgres", autocommit=True):
    return psycopg.connect(conninfo(dbname, user), autocommit=autocommit)


def drop_extension(conn, if_exists=False, timeout=30.0):
    """DROP EXTENSION iotpipe CASCADE, retried when it is chosen as a deadlock victim.

    DROP EXTENSION locks every object of the extension in dependency order while
    running workers (a simulator batch, the launcher's partition upkeep) lock some
    of the same tables in another order: PostgreSQL then cancels one of them, as it
    would for any DROP of tables in use.  The workers retry their side; so does this.
    """
    sql = "DROP EXTENSION " + ("IF EXISTS " if if_exists else "") + "iotpipe CASCADE"
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute(sql)
            return
        except psycopg.errors.DeadlockDetected:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def poll(fn, timeout=30.0, interval=0.1, what="condition"):
    """Call fn() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (
            psycopg.OperationalError,
            psycopg.errors.AdminShutdown,
            psycopg.InterfaceError,
        ) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}; last value: {last!r}"
    )


def wait_ready(timeout=60):
    def ok():
        with connect() as c:
            return c.execute("SELECT 1").fetchone()[0] == 1

    poll(ok, timeout, 0.2, "the server to accept connections")


def restart_server(mode="fast"):
    subprocess.run(
        [os.path.join(ROOT, "scripts/pgcluster.sh"), "restart", DIR, mode], check=True
    )
    wait_ready()


def server_log():
    with open(os.path.join(DIR, "server.log"), errors="replace") as f:
        return f.read()


@pytest.fixture
def db():
    with connect() as c:
        yield c


@pytest.fixture(scope="session")
def kafka():
    from kafka_harness import KafkaBroker  # test/kafka/kafka_harness.py

    broker = KafkaBroker(
        os.path.join(DIR, "kafka"), int(os.environ.get("IOTPIPE_KAFKA_PORT", "19092"))
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session", autouse=True)
def extension():
    """The suite may run without pg_regress first: make sure iotpipe exists."""
    with connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
