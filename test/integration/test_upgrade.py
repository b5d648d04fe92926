"""A library newer than the installed SQL, with a live Kafka stream.

The database is at 0.1.0 (the frozen install script) with a Kafka source that
had consumed part of a topic; the server restarts with this (0.2.0) library
while messages keep arriving.  The workers must wait and say why in
iotpipe.status, consume nothing and lose nothing; after
``ALTER EXTENSION iotpipe UPDATE`` they resume without a restart and every
message ends up in iotpipe.readings exactly once.

The 0.1.0 state is rebuilt from what a 0.2.0 consumer committed (rows,
offsets, the source row), as the 0.1.0 library would have left it: the two
keep the same tables for these.
"""

import time

from psycopg.types.json import Jsonb

from conftest import connect, drop_extension, poll, restart_server
from test_kafka import Producer, kafka_workers, q, q1, stored_offsets, verify

TOPIC = "upgrade-stream"
PREFIX = "upg"
WAITING = "extension iotpipe 0.1.0 is installed; run ALTER EXTENSION iotpipe UPDATE"


def launcher():
    return q("SELECT state, detail FROM iotpipe.status WHERE kind = 'launcher'")[0]


def installed_version():
    return q1("SELECT extversion FROM pg_extension WHERE extname = 'iotpipe'")


def test_workers_wait_for_the_update_and_lose_nothing(kafka):
    kafka.create_topic(TOPIC, partitions=2)
    total = 6000
    # a live stream for the whole test: before, during and after the upgrade
    producer = Producer(kafka.bootstrap, TOPIC, PREFIX, 0, total, 200, 0.25)
    try:
        with connect() as c:
            c.execute(
                "SELECT iotpipe.kafka_start(%s, %s, 'iotpipe-upgrade', 2)",
                (kafka.bootstrap, TOPIC),
            )
        producer.start()
        poll(
            lambda: q1(
                "SELECT count(*) FROM iotpipe.readings WHERE sensor_id LIKE 'upg-%'"
            )
            >= 1000,
            60,
            0.2,
            "the first 1000 messages to be consumed",
        )
        with connect() as c:
            c.execute("SELECT iotpipe.kafka_stop(%s)", (TOPIC,))
        poll(
            lambda: all(w[1] is None for w in kafka_workers(TOPIC)),
            30,
            what="the workers to stop",
        )

        # what the consumer committed: rows and offsets, in one consistent state
        rows = q(
            "SELECT sensor_id, ts, temperature, humidity, location FROM iotpipe.readings "
            "WHERE sensor_id LIKE 'upg-%'"
        )
        offsets = q(
            "SELECT topic, partition, next_offset FROM iotpipe.kafka_offsets "
            "WHERE topic = %s",
            (TOPIC,),
        )
        source = q(
            "SELECT topic, brokers, group_id, workers, options FROM iotpipe.kafka_sources "
            "WHERE topic = %s",
            (TOPIC,),
        )[0]
        assert len(rows) >= 1000 and sum(o[2] for o in offsets) == len(rows)

        # the same state in a 0.1.0 database, the source enabled
        with connect() as c:
            drop_extension(c)
            c.execute("CREATE EXTENSION iotpipe VERSION '0.1.0'")
            c.execute(
                "SELECT iotpipe.create_partitions(current_date - 3, current_date + 1)"
            )
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    rows,
                )
                cur.executemany(
                    "INSERT INTO iotpipe.kafka_offsets (topic, partition, next_offset) "
                    "VALUES (%s, %s, %s)",
                    offsets,
                )
            c.execute(
                "INSERT INTO iotpipe.kafka_sources (topic, brokers, group_id, workers, options) "
                "VALUES (%s, %s, %s, %s, %s)",
                source[:4] + (Jsonb(source[4]),),
            )
        assert installed_version() == "0.1.0"
        consumed_before = len(rows)

        # the server restarts with the new library: the workers wait and say why
        restart_server("fast")
        poll(
            lambda: launcher() == ("waiting", WAITING),
            30,
            0.2,
            "the launcher to wait for the update",
        )
        assert kafka_workers(TOPIC) == []
        # while it waits, messages keep arriving and none is consumed
        hw_before = q1("SELECT count(*) FROM iotpipe.readings")
        time.sleep(3)  # an observation window: absence cannot be polled for
        assert launcher() == ("waiting", WAITING)
        assert (
            q1("SELECT count(*) FROM iotpipe.readings") == hw_before == consumed_before
        )
        assert stored_offsets(TOPIC) == {p: n for _, p, n in offsets}

        # the update: everything resumes without a restart
        with connect() as c:
            c.execute("ALTER EXTENSION iotpipe UPDATE")
        assert installed_version() != "0.1.0"
        poll(lambda: launcher()[0] == "running", 30, 0.2, "the launcher to run again")
        poll(
            lambda: any(w[2] == "running" for w in kafka_workers(TOPIC)),
            60,
            0.2,
            "the Kafka workers to run again",
        )
        producer.finish()
        poll(
            lambda: q1(
                "SELECT count(*) FROM iotpipe.readings WHERE sensor_id LIKE 'upg-%'"
            )
            >= total,
            120,
            0.5,
            f"all {total} messages to be consumed",
        )
        # every message exactly once, with its values
        verify(PREFIX, total)
        assert sum(stored_offsets(TOPIC).values()) == total
    finally:
        if producer.is_alive():
            producer.join(120)
        with connect() as c:
            if installed_version() == "0.1.0":
                c.execute("ALTER EXTENSION iotpipe UPDATE")
            c.execute(
                "SELECT iotpipe.kafka_stop(topic) FROM iotpipe.kafka_sources "
                "WHERE topic = %s",
                (TOPIC,),
            )
        poll(
            lambda: all(w[1] is None for w in kafka_workers(TOPIC)),
            30,
            what="the workers to stop",
        )
        with connect() as c:
            for t in (
                "kafka_sources",
                "kafka_offsets",
                "kafka_watermarks",
                "dead_letters",
            ):
                c.execute(f"DELETE FROM iotpipe.{t} WHERE topic = %s", (TOPIC,))
            c.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'upg-%'")
            c.execute("DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'upg-%'")
