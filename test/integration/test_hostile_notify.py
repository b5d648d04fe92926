"""Notifications that used to stall ingest (issue 11, cases 8 and 9).

- a payload over PostgreSQL's 8000-byte NOTIFY limit (a 7000-character
  location of 3-byte characters and a 128-character rule name) raised inside
  the ingest transaction, losing the batch: now the reading lands, the alert
  row keeps the whole location and the notification arrives cut, with
  "truncated": true, from the engine (C) and from the offline timer (SQL);
- a full NOTIFY queue failed every ingest transaction at commit: while
  pg_notification_queue_usage() is at or above iotpipe.notify_queue_limit the
  notifications are skipped, the alerts still written and the skips counted in
  iotpipe.status.notifies_skipped.  A really full queue takes 8 GB of
  pg_notify on PostgreSQL 15, so the test simulates it with the limit at 0.

Sensors and rules here are it-hn-*.
"""

import json
import time

import pytest
from conftest import connect, poll

CH = "iotpipe_alerts"
LONG_LOC = "€" * 7000  # 21000 bytes
RULE = "it-hn-" + "r" * 122  # 128 characters, the longest name allowed


def ingest(conn, sensor, temperature, location=None):
    m = {"sensor_id": sensor, "ts": now_iso(), "temperature": temperature}
    if location is not None:
        m["location"] = location
    acc, rej = conn.execute(
        "SELECT * FROM iotpipe.ingest_json(%s)", ([json.dumps(m)],)
    ).fetchone()
    assert (acc, rej) == (1, 0)


_step = [0]


def now_iso():
    """Now, one second later at each call: every reading is newer than the last."""
    _step[0] += 1
    t = time.gmtime(time.time() - 600 + _step[0])
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + "Z"


def notifies(listener, timeout):
    return [json.loads(n.payload) for n in listener.notifies(timeout=timeout)]


def skipped(db):
    return db.execute(
        "SELECT notifies_skipped FROM iotpipe.status WHERE kind = 'launcher'"
    ).fetchone()[0]


@pytest.fixture
def clean():
    def wipe():
        with connect() as c:
            c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'it-hn-%'")
            c.execute("DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'it-hn-%'")
            c.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'it-hn-%'")

    wipe()
    with connect() as c:
        yield c
    wipe()


def test_long_rule_name_and_location_are_truncated_in_the_payload(clean):
    db = clean
    db.execute(
        "INSERT INTO iotpipe.sensors (sensor_id, location, first_seen, last_seen) "
        "VALUES ('it-hn-1', %s, now(), now())",
        (LONG_LOC,),
    )
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold) "
        "VALUES (%s, 'threshold', 'temperature', 'it-hn-1', '>', 40)",
        (RULE,),
    )
    with connect() as listener, connect() as producer:
        listener.execute(f"LISTEN {CH}")
        ingest(producer, "it-hn-1", 50)  # no location: the engine takes the sensor's
        got = notifies(listener, 3)
    assert len(got) == 1, got
    p = got[0]
    assert p["truncated"] is True
    assert p["rule"] == RULE and p["sensor_id"] == "it-hn-1" and p["state"] == "firing"
    assert 0 < len(p["location"]) < len(LONG_LOC) and LONG_LOC.startswith(p["location"])
    assert len(json.dumps(p, ensure_ascii=False).encode()) < 8000
    n, loc = db.execute(
        "SELECT count(*), max(a.location) FROM iotpipe.alerts a JOIN iotpipe.alert_rules r "
        "USING (rule_id) WHERE r.name = %s AND a.state = 'firing'",
        (RULE,),
    ).fetchone()
    assert n == 1 and loc == LONG_LOC
    assert (
        db.execute(
            "SELECT count(*) FROM iotpipe.readings WHERE sensor_id = 'it-hn-1'"
        ).fetchone()[0]
        == 1
    )

    # the SQL path (offline timer) builds the same, cut payload
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, sensor_id, for_duration) "
        "VALUES ('it-hn-offline-' || repeat('o', 114), 'offline', 'it-hn-1', '1 minute')"
    )
    with connect() as listener, connect() as timer:
        listener.execute(f"LISTEN {CH}")
        fired = timer.execute(
            "SELECT iotpipe._alert_timers(now() + interval '1 hour')"
        ).fetchone()[0]
        assert fired >= 1
        got = [
            p for p in notifies(listener, 3) if p["rule"].startswith("it-hn-offline-")
        ]
    assert len(got) == 1, got
    assert got[0]["truncated"] is True and got[0]["kind"] == "offline"
    assert LONG_LOC.startswith(got[0]["location"])


def test_payload_that_fits_is_not_truncated(clean):
    db = clean
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold) "
        "VALUES ('it-hn-short', 'threshold', 'temperature', 'it-hn-2', '>', 40)"
    )
    with connect() as listener, connect() as producer:
        listener.execute(f"LISTEN {CH}")
        ingest(producer, "it-hn-2", 50, "x" * 256)
        got = notifies(listener, 3)
    assert len(got) == 1 and "truncated" not in got[0]
    assert got[0]["location"] == "x" * 256


def test_full_notify_queue_skips_notifications_not_readings(clean):
    db = clean
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold) "
        "VALUES ('it-hn-queue', 'threshold', 'temperature', 'it-hn-3', '>', 40)"
    )
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, sensor_id, for_duration) "
        "VALUES ('it-hn-queue-offline', 'offline', 'it-hn-3', '1 minute')"
    )
    before = skipped(db)
    with connect() as listener, connect() as producer:
        listener.execute(f"LISTEN {CH}")
        # the queue "is full": every notification is over the limit
        producer.execute("SET iotpipe.notify_queue_limit = 0")
        ingest(producer, "it-hn-3", 50)  # fires
        ingest(producer, "it-hn-3", 20)  # resolves
        ingest(producer, "it-hn-3", 55)  # fires again
        fired = producer.execute(
            "SELECT iotpipe._alert_timers(now() + interval '1 hour')"
        ).fetchone()[0]
        assert fired == 1
        assert notifies(listener, 1.5) == []
        states = db.execute(
            "SELECT r.name, a.state FROM iotpipe.alerts a JOIN iotpipe.alert_rules r "
            "USING (rule_id) WHERE r.name LIKE 'it-hn-queue%' ORDER BY a.alert_id"
        ).fetchall()
        assert states == [
            ("it-hn-queue", "resolved"),
            ("it-hn-queue", "firing"),
            ("it-hn-queue-offline", "firing"),
        ]
        assert (
            db.execute(
                "SELECT count(*) FROM iotpipe.readings WHERE sensor_id = 'it-hn-3'"
            ).fetchone()[0]
            == 3
        )
        # counted at commit, on the launcher's row for non-worker sessions
        poll(
            lambda: skipped(db) - before == 4, timeout=5, what="4 skipped notifications"
        )

        # room again: notifications flow
        producer.execute("RESET iotpipe.notify_queue_limit")
        ingest(producer, "it-hn-3", 20)  # resolves both (any reading ends offline)
        got = notifies(listener, 3)
    assert sorted((p["rule"], p["state"]) for p in got) == [
        ("it-hn-queue", "resolved"),
        ("it-hn-queue-offline", "resolved"),
    ]
    assert skipped(db) - before == 4


def test_notify_queue_limit_is_a_fraction():
    with connect() as c:
        assert c.execute("SHOW iotpipe.notify_queue_limit").fetchone()[0] == "0.5"
        with pytest.raises(Exception, match="notify_queue_limit"):
            c.execute("SET iotpipe.notify_queue_limit = 1.5")
