"""docker/: the compose deployment cannot run here (no Docker engine), so check it by
construction: the compose file parses and has the services the demo needs, every
build context, Dockerfile, COPY source and mounted file exists, the scripts parse, and
init.sql runs against a real iotpipe database (in a transaction that is rolled back, so
neither the Kafka source nor the simulator it declares is started)."""

import os
import re
import shlex
import subprocess

import yaml

from conftest import ROOT, connect

DOCKER = os.path.join(ROOT, "docker")
COMPOSE = os.path.join(DOCKER, "docker-compose.yml")


def compose():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def dockerfile_copies(path):
    """(sources, destination) of every COPY/ADD without --from, continuation lines joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    out = []
    for line in text.splitlines():
        words = (
            shlex.split(line, comments=True)
            if line.strip() and not line.lstrip().startswith("#")
            else []
        )
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if any(w.startswith("--from") for w in words[1:]):
                continue
            out.append((args[:-1], args[-1]))
    return out


def test_compose_services():
    c = compose()
    s = c["services"]
    assert {"kafka", "postgres", "init", "dashboard"} <= set(s)
    assert s["kafka"]["image"].startswith("apache/kafka:")
    env = s["kafka"]["environment"]
    assert (
        "controller" in env["KAFKA_PROCESS_ROLES"]
        and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    )  # KRaft
    assert "ZOOKEEPER" not in str(env).upper()
    # the init step waits for PostgreSQL and the topic; the dashboard for the init step
    assert s["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (
        s["dashboard"]["depends_on"]["init"]["condition"]
        == "service_completed_successfully"
    )
    assert "8501:8501" in s["dashboard"]["ports"]
    url = s["dashboard"]["environment"]["IOTPIPE_DASHBOARD_URL"]
    assert (
        url.startswith("postgresql://iotpipe_dashboard:")
        and "@postgres:5432/iotpipe" in url
    )
    # the same database name everywhere
    pg_cmd = " ".join(open(os.path.join(DOCKER, "postgres.Dockerfile")).read().split())
    assert (
        "shared_preload_libraries=iotpipe" in pg_cmd
        and "iotpipe.database=iotpipe" in pg_cmd
    )
    assert s["postgres"]["environment"]["POSTGRES_DB"] == "iotpipe"
    assert s["init"]["environment"]["PGDATABASE"] == "iotpipe"
    # the topic the init step declares is the one kafka-init creates
    topic = s["kafka-init"]["command"][s["kafka-init"]["command"].index("--topic") + 1]
    init_sql = open(os.path.join(DOCKER, "init.sql")).read()
    assert f"topic => '{topic}'" in init_sql and "sink => 'kafka'" in init_sql
    assert "brokers => 'kafka:9092'" in init_sql


def test_compose_references_exist():
    s = compose()["services"]
    builds = 0
    for name, svc in s.items():
        if "build" in svc:
            builds += 1
            ctx = os.path.normpath(os.path.join(DOCKER, svc["build"]["context"]))
            dockerfile = os.path.join(ctx, svc["build"]["dockerfile"])
            assert os.path.isdir(ctx), name
            assert os.path.isfile(dockerfile), (name, dockerfile)
            for sources, _ in dockerfile_copies(dockerfile):
                for src in sources:
                    assert os.path.exists(os.path.join(ctx, src)), (name, src)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(DOCKER, src)), (name, src)
        ep = svc.get("entrypoint") or []
        for word in ep:
            if word.startswith("/iotpipe-init/"):
                mounted = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
                assert word in mounted, (name, word)
    assert builds >= 2


def test_dockerfiles_build_like_the_tests():
    pg = open(os.path.join(DOCKER, "postgres.Dockerfile")).read()
    assert "FROM postgres:15" in pg
    # the Makefile's and scripts/pginstall.sh's build and install steps
    assert "make -s with_llvm=no && make -s with_llvm=no install" in pg
    assert (
        "make -s with_llvm=no"
        in open(os.path.join(ROOT, "scripts", "pginstall.sh")).read()
    )
    for pkg in ("postgresql-server-dev-15", "librdkafka-dev", "libcurl4-openssl-dev"):
        assert pkg in pg
    dash = open(os.path.join(DOCKER, "dashboard.Dockerfile")).read()
    assert "requirements.txt" in dash and "dashboard/run.sh" in dash
    req = open(os.path.join(ROOT, "requirements.txt")).read()
    assert re.search(r"^streamlit==", req, re.M) and re.search(r"^psycopg", req, re.M)


def test_scripts_parse():
    for script in (
        os.path.join(DOCKER, "init.sh"),
        os.path.join(ROOT, "dashboard", "run.sh"),
    ):
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", script], check=True)


def test_init_sql_runs_in_a_rolled_back_transaction():
    sql = open(os.path.join(DOCKER, "init.sql")).read()
    assert not re.search(
        r"^\s*\\", sql, re.M
    ), "init.sql must be plain SQL (no psql meta-commands)"
    with connect(autocommit=False) as c:
        try:
            c.execute(sql)
            rules = c.execute(
                "SELECT count(*) FROM iotpipe.alert_rules WHERE name IN "
                "('overheating', 'cold room too warm', 'humid', 'sensor offline', 'temperature anomaly')"
            ).fetchone()[0]
            assert rules == 5
            assert (
                c.execute(
                    "SELECT count(*) FROM iotpipe.kafka_sources WHERE topic = 'iot.readings'"
                ).fetchone()[0]
                == 1
            )
            sim = c.execute(
                "SELECT enabled, sink, topic, brokers FROM iotpipe.simulator"
            ).fetchone()
            assert sim == (True, "kafka", "iot.readings", "kafka:9092")
            assert c.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = 'iotpipe_dashboard'"
            ).fetchone()
        finally:
            c.rollback()
    # nothing of it stayed
    with connect() as c:
        assert (
            c.execute(
                "SELECT count(*) FROM iotpipe.kafka_sources WHERE topic = 'iot.readings'"
            ).fetchone()[0]
            == 0
        )
