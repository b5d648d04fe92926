"""Kafka source hardening: the librdkafka properties a source may set are an
allowlist (properties that run a shell command or load a library into the
server are refused, in kafka_start and again by the worker for a row written
by hand), and secret values can come from files under iotpipe.secrets_dir so
that they are never in SQL text, the table, the log or iotpipe.status.
"""

import os
import secrets

import psycopg
import pytest
from psycopg.types.json import Jsonb
from kafka_harness import produce

from conftest import DIR, connect, poll, server_log
import test_kafka
from test_kafka import kafka_workers, messages, start, verify, wait_caught_up

sources = test_kafka.sources  # the fixture: topics cleaned up afterwards

# properties that make librdkafka run a program or load code in a backend
FORBIDDEN = {
    "sasl.kerberos.kinit.cmd": "touch /tmp/iotpipe-never",
    "plugin.library.paths": "/tmp/iotpipe-never.so",
    "ssl.engine.location": "/tmp/iotpipe-never-engine.so",
    "interceptor.test.config1": "iotpipe-never-config",
    "ssl.providers": "legacy",
    "sasl.kerberos.principal": "x; touch /tmp/iotpipe-never",
}


def source_rows(topic):
    with connect() as c:
        return c.execute(
            "SELECT count(*) FROM iotpipe.kafka_sources WHERE topic = %s", (topic,)
        ).fetchone()[0]


def all_status_text():
    with connect() as c:
        return " ".join(
            str(r)
            for r in c.execute(
                "SELECT worker, state, last_error, detail FROM iotpipe.status"
            ).fetchall()
        )


@pytest.mark.parametrize("prop", sorted(FORBIDDEN))
def test_kafka_start_refuses_forbidden_properties(kafka, prop):
    topic = f"iot-sec-refuse-{prop.replace('.', '-')}"
    value = FORBIDDEN[prop]
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, %s, options => %s)",
                (kafka.bootstrap, topic, Jsonb({prop: value, "fetch.wait.max.ms": 50})),
            )
    assert (
        e.value.diag.message_primary == f'librdkafka property "{prop}" is not allowed'
    )
    assert "docs/kafka.md" in (e.value.diag.message_hint or "")
    assert value not in str(e.value)
    assert source_rows(topic) == 0


def test_kafka_start_refuses_gssapi_and_managed_properties(kafka):
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, 'iot-sec-gssapi', options => %s)",
                (
                    kafka.bootstrap,
                    Jsonb(
                        {
                            "security.protocol": "sasl_plaintext",
                            "sasl.mechanisms": "GSSAPI",
                        }
                    ),
                ),
            )
        assert 'SASL mechanism "GSSAPI" is not allowed' in str(e.value)
        # librdkafka's default mechanism is GSSAPI: a SASL protocol must name one
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, 'iot-sec-gssapi', options => %s)",
                (kafka.bootstrap, Jsonb({"security.protocol": "SASL_SSL"})),
            )
        assert 'kafka option "sasl.mechanism" is required' in str(e.value)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, 'iot-sec-gssapi', options => %s)",
                (kafka.bootstrap, Jsonb({"client.id": "mine"})),
            )
        assert 'kafka option "client.id" is managed by iotpipe' in str(e.value)
    assert source_rows("iot-sec-gssapi") == 0


def test_worker_refuses_a_hand_written_forbidden_option(kafka, sources):
    """A row inserted by hand gets no further than kafka_start would let it."""
    topic = "iot-sec-kinit"
    sources.append((topic, None))
    kafka.create_topic(topic, 1)
    marker = f"/tmp/iotpipe-pwned-{secrets.token_hex(6)}"
    options = {
        "security.protocol": "sasl_plaintext",
        "sasl.mechanisms": "GSSAPI",
        "sasl.kerberos.kinit.cmd": f"touch {marker}",
    }
    with connect() as c:
        c.execute(
            "INSERT INTO iotpipe.kafka_sources (topic, brokers, options) VALUES (%s, %s, %s)",
            (topic, kafka.bootstrap, Jsonb(options)),
        )
        c.execute("SELECT iotpipe._wake_launcher()")

    def refused_or_ran():
        if os.path.exists(marker):
            return "ran"
        errs = [w[3] or "" for w in kafka_workers(topic)]
        return any("sasl.kerberos.kinit.cmd" in e for e in errs) and errs

    try:
        poll(refused_or_ran, 60, 0.2, "the worker to refuse the source")
        assert not os.path.exists(marker), "librdkafka ran sasl.kerberos.kinit.cmd"
        errs = [w[3] for w in kafka_workers(topic)]
        assert errs == [
            'kafka consumer: librdkafka property "sasl.kerberos.kinit.cmd" is not allowed'
        ]
        assert marker not in all_status_text()
        assert marker not in server_log()
    finally:
        if os.path.exists(marker):
            os.unlink(marker)


# ---------------------------------------------------------------- secrets from files


@pytest.fixture
def secrets_dir():
    """iotpipe.secrets_dir set to a fresh directory; reset afterwards."""
    d = os.path.join(DIR, f"secrets-{secrets.token_hex(4)}")
    os.makedirs(d, mode=0o700)
    os.chown(d, *server_owner())

    def set_dir(value):
        with connect() as c:
            if value is None:
                c.execute("ALTER SYSTEM RESET iotpipe.secrets_dir")
            else:
                c.execute(f"ALTER SYSTEM SET iotpipe.secrets_dir = '{value}'")
            c.execute("SELECT pg_reload_conf()")

        def current():
            with connect() as c:
                return c.execute("SHOW iotpipe.secrets_dir").fetchone()[0]

        poll(
            lambda: current() == (value or ""),
            10,
            0.1,
            "iotpipe.secrets_dir to be reloaded",
        )

    set_dir(d)
    yield d
    set_dir(None)


def server_owner():
    """The OS user the server runs as (postgres when the suite runs as root)."""
    st = os.stat(os.path.join(DIR, "data"))
    return st.st_uid, st.st_gid


def write_secret(d, name, value):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    os.chown(path, *server_owner())
    return path


def refused(kafka, topic, options):
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, %s, options => %s)",
                (kafka.bootstrap, topic, Jsonb(options)),
            )
    assert source_rows(topic) == 0
    return str(e.value)


def test_secret_files_are_off_by_default(kafka):
    with connect() as c:
        assert c.execute("SHOW iotpipe.secrets_dir").fetchone()[0] == ""
    msg = refused(kafka, "iot-sec-off", {"sasl.password": {"file": "kafka.pass"}})
    assert "iotpipe.secrets_dir is not set" in msg


def test_secret_file_paths_stay_inside_the_directory(kafka, secrets_dir):
    write_secret(secrets_dir, "kafka.pass", "inside-" + secrets.token_hex(8))
    os.symlink("/etc/hostname", os.path.join(secrets_dir, "escape"))
    topic = "iot-sec-paths"
    for file, expect in [
        ("../kafka.pass", 'must not contain ".."'),
        ("sub/../../x", 'must not contain ".."'),
        ("/etc/hostname", "outside iotpipe.secrets_dir"),
        # outside is refused before the file system is asked: no existence oracle
        ("/no-such-dir-iotpipe/x", "outside iotpipe.secrets_dir"),
        (secrets_dir + "-sibling/kafka.pass", "outside iotpipe.secrets_dir"),
        ("escape", "outside iotpipe.secrets_dir"),
        ("missing.pass", 'could not open the secret file "missing.pass"'),
    ]:
        msg = refused(kafka, topic, {"sasl.password": {"file": file}})
        assert expect in msg and "sasl.password" in msg, (file, msg)
    # only the secret-valued properties come from files
    msg = refused(kafka, topic, {"security.protocol": {"file": "kafka.pass"}})
    assert 'librdkafka property "security.protocol" cannot be read from a file' in msg
    for shape in ({"file": 1}, {"file": "kafka.pass", "x": 1}, {"path": "kafka.pass"}):
        msg = refused(kafka, topic, {"sasl.password": shape})
        assert 'kafka option "sasl.password" must be a string' in msg
    # the absolute path of a file inside is fine
    with connect() as c:
        c.execute(
            "SELECT iotpipe.kafka_start(%s, %s, options => %s)",
            (
                kafka.bootstrap,
                topic,
                Jsonb(
                    {"sasl.password": {"file": os.path.join(secrets_dir, "kafka.pass")}}
                ),
            ),
        )
        c.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
        c.execute("DELETE FROM iotpipe.kafka_sources WHERE topic = %s", (topic,))


def test_secret_from_a_file_is_read_by_the_worker_and_never_shown(
    kafka, sources, secrets_dir
):
    topic, prefix = "iot-sec-file", "ksf"
    sources.append((topic, prefix))
    kafka.create_topic(topic, 2)
    secret = "hunter2-file-" + secrets.token_hex(8)
    write_secret(secrets_dir, "kafka.pass", secret)

    # a failing kafka_start written as a literal: the statement is logged
    # (log_min_error_statement), the secret is not in it
    bad = (
        f"SELECT iotpipe.kafka_start('{kafka.bootstrap}', '{topic}', options => "
        '\'{"sasl.password": {"file": "kafka.pass"}, "plugin.library.paths": "/tmp/x.so"}\')'
    )
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(bad)
    assert 'librdkafka property "plugin.library.paths" is not allowed' in str(e.value)
    assert secret not in str(e.value)
    assert source_rows(topic) == 0

    # allowed tuning options and a file-based password: the source consumes
    start(
        kafka,
        topic,
        workers=2,
        options={
            "sasl.password": {"file": "kafka.pass"},
            "fetch.wait.max.ms": 20,
            "fetch.min.bytes": 1,
            "socket.timeout.ms": 10000,
            "reconnect.backoff.ms": 50,
            "client.rack": "rack-1",
            "auto.offset.reset": "earliest",
        },
    )
    produce(kafka.bootstrap, topic, messages(prefix, 0, 3000))
    wait_caught_up(kafka, topic)
    verify(prefix, 3000)
    with connect() as c:
        stored = c.execute(
            "SELECT options::text FROM iotpipe.kafka_sources WHERE topic = %s", (topic,)
        ).fetchone()[0]
    assert secret not in stored and "kafka.pass" in stored

    # the worker reads the file whenever it builds its conf: without it, it refuses
    os.unlink(os.path.join(secrets_dir, "kafka.pass"))
    with connect() as c:
        c.execute(
            "UPDATE iotpipe.kafka_sources SET generation = generation + 1 WHERE topic = %s",
            (topic,),
        )
        c.execute("SELECT iotpipe._wake_launcher()")
    poll(
        lambda: any(
            'secret file "kafka.pass" of kafka option "sasl.password"' in (w[3] or "")
            for w in kafka_workers(topic)
        ),
        60,
        0.2,
        "the restarted workers to report the missing secret file",
    )

    assert secret not in server_log()
    assert bad in server_log(), "the failing statement was not logged"
    assert secret not in all_status_text()
    for role in ("iotpipe_operator", "iotpipe_analyst"):
        with connect() as c:
            c.execute(f"SET ROLE {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT options FROM iotpipe.kafka_sources")
