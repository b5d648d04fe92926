"""Alert delivery (issue 12): receivers, routes, the outbox and the notifier,
against real servers in the test process (delivery_servers.py): an HTTP(S)
webhook server, an SMTP server with STARTTLS and AUTH, a self-signed
certificate.  On 0.1.0 none of this exists (no iotpipe.receivers, no
notifier): every test here fails there at its first INSERT."""

import collections
import datetime
import json
import os
import signal
import time

import psycopg
import pytest

from conftest import connect, poll, restart_server, server_log, wait_ready
from delivery_servers import SelfSignedCert, SmtpServer, WebhookServer

LOC = "dlv-plant"
_clock = [0]


def ts():
    """Increasing event times near now (ingest refuses the far future)."""
    _clock[0] += 1
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=30)
    return (t + datetime.timedelta(milliseconds=_clock[0])).isoformat()


def msg(sensor, temp, location=LOC):
    return json.dumps(
        {"sensor_id": sensor, "ts": ts(), "temperature": temp, "location": location}
    )


def ingest(db, msgs):
    return db.execute("SELECT * FROM iotpipe.ingest_json(%s)", (msgs,)).fetchone()


def rule(db, name, threshold=50, clear=40, severity="warning", location=LOC):
    return db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold,"
        " severity, location) VALUES (%s, 'threshold', 'temperature', '>', %s, %s, %s, %s)"
        " RETURNING rule_id",
        (name, threshold, clear, severity, location),
    ).fetchone()[0]


def receiver(db, name, url, kind="webhook", options=None):
    db.execute(
        "INSERT INTO iotpipe.receivers (name, kind, url, options) VALUES (%s, %s, %s, %s)",
        (name, kind, url, json.dumps(options or {})),
    )


def route(db, receiver_name, position=0, cont=False, **match):
    cols = ["receiver", "position", "continue"] + list(match)
    db.execute(
        f"INSERT INTO iotpipe.routes ({', '.join(cols)})"
        f" VALUES ({', '.join(['%s'] * len(cols))})",
        [receiver_name, position, cont] + list(match.values()),
    )


def notifications(db, where="true"):
    return db.execute(
        "SELECT notification_id, alert_id, receiver, event, state, attempts,"
        f" idempotency_key::text, last_error FROM iotpipe.notifications WHERE {where}"
        " ORDER BY notification_id"
    ).fetchall()


def notifier(db):
    return db.execute(
        "SELECT pid, state, messages, rows, rejected, detail, last_error"
        " FROM iotpipe.status WHERE worker = 'notifier'"
    ).fetchone()


def set_gucs(**settings):
    with connect() as c:
        for k, v in settings.items():
            if v is None:
                c.execute(f"ALTER SYSTEM RESET iotpipe.{k}")
            else:
                c.execute(f"ALTER SYSTEM SET iotpipe.{k} = '{v}'")
        c.execute("SELECT pg_reload_conf()")

    def applied():
        with connect() as c:
            return all(
                c.execute("SELECT current_setting(%s)", (f"iotpipe.{k}",)).fetchone()[0]
                == str(v)
                for k, v in settings.items()
                if v is not None
            )

    poll(applied, 10, what="the settings to be reloaded")
    # the notifier reloads in its wait, which SIGHUP ends at once
    time.sleep(0.2)


@pytest.fixture(scope="module", autouse=True)
def fast_retries():
    set_gucs(
        notify_retry_base="100ms",
        notify_retry_max="1s",
        notify_max_attempts=5,
        notify_timeout="3s",
    )
    yield
    set_gucs(
        notify_retry_base=None,
        notify_retry_max=None,
        notify_max_attempts=None,
        notify_timeout=None,
    )


def cleanup(c):
    c.execute("DELETE FROM iotpipe.routes")
    c.execute("DELETE FROM iotpipe.receivers")
    c.execute("DELETE FROM iotpipe.notifications")
    c.execute("DELETE FROM iotpipe.silences WHERE location = %s", (LOC,))
    c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'dlv-%%'")


@pytest.fixture(autouse=True)
def clean():
    with connect() as c:
        cleanup(c)
    yield
    with connect() as c:
        cleanup(c)


@pytest.fixture
def web():
    s = WebhookServer().start()
    yield s
    s.stop()


def wait_requests(server, n, timeout=30, path=None):
    return poll(
        lambda: len(server.received(path)) >= n and server.received(path),
        timeout,
        what=f"{n} webhook requests",
    )


# ------------------------------------------------------------------ delivery


def test_fire_and_resolve_arrive_once_each_with_the_key(db, web):
    rule(db, "dlv-hot")
    receiver(db, "dlv-web", web.url("/hook"))
    receiver(db, "dlv-other", web.url("/other"))
    route(db, "dlv-web", position=1)
    route(db, "dlv-other", position=2, rule="dlv-no-such-rule")  # never matches
    poll(lambda: notifier(db) and notifier(db)[0], 15, what="the notifier to start")

    ingest(db, [msg("dlv-s1", 70)])
    wait_requests(web, 1)
    ingest(db, [msg("dlv-s1", 30)])
    reqs = wait_requests(web, 2)
    time.sleep(1)  # nothing more comes: once each
    reqs = web.received()
    assert len(reqs) == 2, (
        notifications(db),
        db.execute(
            "SELECT alert_id, rule_id, sensor_id, state FROM iotpipe.alerts WHERE sensor_id = %s",
            ("dlv-s1",),
        ).fetchall(),
    )
    assert [r.path for r in reqs] == ["/hook", "/hook"]

    rows = notifications(db)
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [
        ("dlv-web", "firing", "sent", 1),
        ("dlv-web", "resolved", "sent", 1),
    ]
    alert_id = db.execute(
        "SELECT alert_id FROM iotpipe.alerts WHERE sensor_id = 'dlv-s1'"
    ).fetchone()[0]
    for req, row, state in zip(reqs, rows, ["firing", "resolved"]):
        assert req.headers["Content-Type"] == "application/json"
        assert req.key == row[6]  # stable per notification
        body = req.json
        assert body["receiver"] == "dlv-web"
        assert body["notification_id"] == row[0]
        assert body["event"] == state
        assert len(body["alerts"]) == 1
        a = body["alerts"][0]
        assert a["alert_id"] == alert_id and a["state"] == state
        assert a["rule"] == "dlv-hot" and a["sensor_id"] == "dlv-s1"
        assert a["location"] == LOC and a["severity"] == "warning"
        # the NOTIFY payload's fields
        assert {"rule_id", "metric", "value", "threshold", "ts"} <= set(a)
    assert reqs[0].key != reqs[1].key
    assert reqs[0].json["alerts"][0]["value"] == 70
    # each attempt recorded
    att = db.execute(
        "SELECT notification_id, attempt, status, error FROM iotpipe.notification_attempts"
        " ORDER BY 1"
    ).fetchall()
    assert att == [(rows[0][0], 1, 200, None), (rows[1][0], 1, 200, None)]
    st = notifier(db)
    assert st[4] == 0 and st[3] >= 2


def test_500s_then_success_delivered_once_after_retries(db, web):
    web.behaviour = lambda n, path: (500, 0) if n <= 3 else (200, 0)
    rule(db, "dlv-retry")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    ingest(db, [msg("dlv-r1", 80)])
    reqs = wait_requests(web, 4, 30)
    poll(lambda: notifications(db)[0][4] == "sent", 10, what="the notification as sent")
    time.sleep(0.5)
    reqs = web.received()
    assert len(reqs) == 4, "delivered once after three 500s"
    assert len({r.key for r in reqs}) == 1, "every retry carries the same key"
    (n,) = notifications(db)
    assert n[4:6] == ("sent", 4) and n[7] is None
    att = db.execute(
        "SELECT attempt, status, error FROM iotpipe.notification_attempts ORDER BY attempt"
    ).fetchall()
    assert att == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 500, "HTTP 500"),
        (4, 200, None),
    ]
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    # 100 ms doubling, each drawn in [half, all]: 50-100, 100-200, 200-400 ms
    assert gaps[0] >= 0.04 and gaps[2] > gaps[0], gaps


def test_failed_after_the_limit_and_counted(db, web):
    web.behaviour = lambda n, path: (500, 0)
    rule(db, "dlv-fail")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    poll(lambda: notifier(db) and notifier(db)[0], 15, what="the notifier")
    before = notifier(db)[4]
    ingest(db, [msg("dlv-f1", 80)])
    poll(lambda: notifications(db)[0][4] == "failed", 30, what="failed")
    (n,) = notifications(db)
    assert n[5] == 5
    assert n[7] == "gave up after 5 attempts: HTTP 500"
    assert len(web.received()) == 5
    poll(lambda: notifier(db)[4] == before + 1, 5, what="failed counted in status")
    ov = db.execute(
        "SELECT pending, sent, failed FROM iotpipe.receiver_overview WHERE name = 'dlv-web'"
    ).fetchone()
    assert ov == (0, 0, 1)


def test_receiver_down_then_up_everything_delivered_in_order(db):
    set_gucs(notify_max_attempts=1000)
    try:
        web = WebhookServer()  # a port, nobody listening yet
        rule(db, "dlv-down")
        receiver(db, "dlv-web", web.url())
        route(db, "dlv-web")
        sensors = [f"dlv-d{i}" for i in range(10)]
        ingest(db, [msg(s, 90) for s in sensors])
        ingest(db, [msg(s, 20) for s in sensors])
        assert len(notifications(db)) == 20
        time.sleep(30)  # down for 30 s: retries with backoff, nothing lost
        rows = notifications(db)
        assert all(r[4] == "pending" for r in rows), rows
        # fires retried with backoff; each resolve waits behind its fire
        assert all(r[5] >= 2 for r in rows if r[3] == "firing"), rows
        assert all(r[5] == 0 for r in rows if r[3] == "resolved"), rows
        err = db.execute(
            "SELECT DISTINCT last_error FROM iotpipe.notifications WHERE event = 'firing'"
        ).fetchall()
        assert err == [("Couldn't connect to server",)]
        web.start()
        try:
            poll(
                lambda: all(r[4] == "sent" for r in notifications(db)),
                30,
                what="everything delivered",
            )
            reqs = web.received()
            keys = [r.key for r in reqs]
            assert sorted(set(keys)) == sorted(r[6] for r in rows)
            assert len(keys) == 20, "each once"
            # in order per alert: its fire before its resolve
            seen = {}
            for r in reqs:
                a = r.json["alerts"][0]
                seen.setdefault(a["alert_id"], []).append(a["state"])
            assert all(v == ["firing", "resolved"] for v in seen.values()), seen
        finally:
            web.stop()
    finally:
        set_gucs(notify_max_attempts=5)


def test_rolled_back_alert_is_never_sent(db, web):
    rule(db, "dlv-rb")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    with connect(autocommit=False) as c:
        ingest(c, [msg("dlv-rolled-back", 99)])
        assert (
            c.execute("SELECT count(*) FROM iotpipe.notifications").fetchone()[0] == 1
        )
        c.rollback()
    # a committed alert after it goes out; the rolled-back one never does
    ingest(db, [msg("dlv-committed", 99)])
    wait_requests(web, 1)
    time.sleep(1)
    sensors = [r.json["alerts"][0]["sensor_id"] for r in web.received()]
    assert sensors == ["dlv-committed"]
    assert [r[3] for r in notifications(db)] == ["firing"]


def stream_then_fault(db, web, fault, n=300):
    """n alerts queued at once to a slow webhook; fault() mid-stream; then
    every notification arrives, duplicates only with their own key."""
    web.behaviour = lambda k, path: (200, 0.02)
    rule(db, "dlv-fault")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    poll(lambda: notifier(db) and notifier(db)[0], 15, what="the notifier")
    ingest(db, [msg(f"dlv-k{i}", 95) for i in range(n)])
    expected = {r[6]: r[0] for r in notifications(db)}
    assert len(expected) == n
    poll(lambda: len(web.received()) >= n // 5, 60, what="deliveries under way")
    fault()
    wait_ready()

    def all_sent():
        with connect() as c:
            return (
                c.execute(
                    "SELECT count(*) FROM iotpipe.notifications WHERE state = 'sent'"
                ).fetchone()[0]
                == n
            )

    poll(all_sent, 90, 0.3, "every notification delivered after the fault")
    reqs = web.received()
    counts = collections.Counter(r.key for r in reqs)
    assert set(counts) == set(expected), "nothing missing, nothing unknown"
    for r in reqs:  # a duplicate is the same notification, byte for byte
        assert r.json["notification_id"] == expected[r.key]
    dups = sum(c - 1 for c in counts.values())
    print(
        f"{fault.__name__}: {len(reqs)} requests for {n} notifications, {dups} duplicates"
    )
    assert dups <= 64, dups  # at most what was in flight or not yet recorded
    return dups


def test_kill9_of_the_notifier_mid_stream_loses_nothing(db, web):
    def kill_notifier():
        pid = notifier(db)[0]
        os.kill(pid, signal.SIGKILL)  # a crash: the server restarts every backend

    stream_then_fault(db, web, kill_notifier)


def test_immediate_server_stop_with_a_full_outbox_loses_nothing(db, web):
    def immediate_restart():
        restart_server("immediate")

    stream_then_fault(db, web, immediate_restart)


def test_sigterm_ends_the_notifier_at_once_while_a_request_hangs(db, web):
    web.behaviour = lambda n, path: (200, 8) if n == 1 else (200, 0)  # the first hangs
    rule(db, "dlv-term")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    pid = poll(lambda: (n := notifier(db)) and n[0], 15, what="the notifier")
    ingest(db, [msg("dlv-t1", 99)])
    wait_requests(web, 1)  # in flight, the server sits on it
    t = time.monotonic()
    assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    poll(
        lambda: not db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone(),
        5,
        0.05,
        "the notifier to exit",
    )
    assert (
        time.monotonic() - t < 2
    ), "SIGTERM is served in the wait, not after the request"
    # the launcher starts another one, which sends it again with the same key
    poll(
        lambda: notifications(db)[0][4] == "sent",
        30,
        what="the retry by the new notifier",
    )
    keys = {r.key for r in web.received()}
    assert len(web.received()) == 2 and keys == {notifications(db)[0][6]}


def test_routes_position_continue_and_min_severity(db, web):
    rule(db, "dlv-warn", severity="warning")
    rule(db, "dlv-crit", threshold=60, clear=40, severity="critical")
    rule(db, "dlv-warn-b", severity="warning", location="dlv-b")
    for name in ("a", "b", "c", "d"):
        receiver(db, f"dlv-{name}", web.url(f"/{name}"))
    # 1: critical only, stops; 2: sensor dlv-x, continues; 3: location dlv-b; 4: the rest
    route(db, "dlv-a", position=1, min_severity="critical")
    route(db, "dlv-b", position=2, cont=True, sensor_id="dlv-x")
    route(db, "dlv-c", position=3, location="dlv-b")
    route(db, "dlv-d", position=4)
    route(db, "dlv-d", position=5)  # the same receiver twice: one notification

    ingest(db, [msg("dlv-w", 55)])  # warning in LOC -> d
    ingest(db, [msg("dlv-k", 65)])  # warning + critical in LOC -> d, a
    ingest(db, [msg("dlv-x", 55)])  # warning, sensor dlv-x -> b, continue -> d
    ingest(db, [msg("dlv-y", 55, location="dlv-b")])  # dlv-b -> c, stops
    got = db.execute(
        "SELECT a.sensor_id, r.name, pg_catalog.string_agg(n.receiver, ',' ORDER BY n.receiver)"
        "  FROM iotpipe.notifications n JOIN iotpipe.alerts a USING (alert_id)"
        "  JOIN iotpipe.alert_rules r USING (rule_id) GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert got == [
        ("dlv-k", "dlv-crit", "dlv-a"),
        ("dlv-k", "dlv-warn", "dlv-d"),
        ("dlv-w", "dlv-warn", "dlv-d"),
        ("dlv-x", "dlv-warn", "dlv-b,dlv-d"),
        ("dlv-y", "dlv-warn-b", "dlv-c"),
    ]
    wait_requests(web, 6)
    time.sleep(0.5)
    paths = collections.Counter(r.path for r in web.received())
    assert paths == {"/a": 1, "/b": 1, "/c": 1, "/d": 3}


def test_silenced_alerts_are_recorded_not_sent_and_ack_sends_nothing(db, web):
    rule(db, "dlv-sil")
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    db.execute(
        "INSERT INTO iotpipe.silences (sensor_id, ends_at, reason)"
        " VALUES ('dlv-quiet', now() + interval '1 hour', 'maintenance')"
    )
    ingest(db, [msg("dlv-quiet", 90), msg("dlv-loud", 90)])
    wait_requests(web, 1)
    quiet = db.execute(
        "SELECT alert_id, silenced FROM iotpipe.alerts WHERE sensor_id = 'dlv-quiet'"
    ).fetchone()
    assert quiet[1] is True, "recorded"
    loud = db.execute(
        "SELECT alert_id FROM iotpipe.alerts WHERE sensor_id = 'dlv-loud'"
    ).fetchone()[0]
    db.execute("SELECT iotpipe.ack_alert(%s)", (loud,))
    db.execute("SELECT iotpipe.ack_alert(%s)", (quiet[0],))
    time.sleep(1.5)
    assert [r.json["alerts"][0]["sensor_id"] for r in web.received()] == ["dlv-loud"]
    assert [r[1] for r in notifications(db)] == [loud]


def test_sql_paths_queue_too_offline_ended_silence_disabled_rule(db, web):
    """The fires and resolves written by SQL (the launcher's timers, a rule
    update) reach the outbox in their own transactions like the engine's."""
    rule(db, "dlv-sqlpath")
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, for_duration, severity, location)"
        " VALUES ('dlv-offline', 'offline', '1 s', 'warning', 'dlv-off')"
    )
    receiver(db, "dlv-web", web.url())
    route(db, "dlv-web")
    # a silence that ends in 2 s holds back a fire, which is sent when it ends
    db.execute(
        "INSERT INTO iotpipe.silences (sensor_id, ends_at, reason)"
        " VALUES ('dlv-held', now() + interval '2 s', 'short maintenance')"
    )
    ingest(db, [msg("dlv-held", 90), msg("dlv-quiet-sensor", 20, location="dlv-off")])
    assert notifications(db, "event = 'firing'") == []  # silenced: nothing yet

    def events():
        return {
            (
                r.json["alerts"][0]["rule"],
                r.json["alerts"][0]["sensor_id"],
                r.json["event"],
            )
            for r in web.received()
        }

    # the offline timer fires for both sensors (no reading for 1 s); the silence ends
    poll(
        lambda: {
            ("dlv-offline", "dlv-quiet-sensor", "firing"),
            ("dlv-sqlpath", "dlv-held", "firing"),
        }
        <= events(),
        20,
        what="the offline fire and the fire held back by the silence",
    )
    off = [
        r.json["alerts"][0] for r in web.received()
        if r.json["alerts"][0]["rule"] == "dlv-offline"
    ]  # fmt: skip
    assert off[0]["kind"] == "offline" and off[0]["state"] == "firing"
    # disabling a rule resolves its firing alerts: the resolve is delivered too
    db.execute(
        "UPDATE iotpipe.alert_rules SET enabled = false WHERE name = 'dlv-sqlpath'"
    )
    poll(
        lambda: ("dlv-sqlpath", "dlv-held", "resolved") in events(),
        20,
        what="the resolve of the disabled rule",
    )


def test_slack_format(db, web):
    rule(db, "dlv-slack", severity="critical")
    receiver(db, "dlv-chat", web.url("/slack"), kind="slack")
    route(db, "dlv-chat")
    ingest(db, [msg("dlv-sl<1>", 77)])
    (req,) = wait_requests(web, 1)
    assert set(req.json) == {"text"}
    text = req.json["text"]
    assert text.startswith(
        "[FIRING] critical: dlv-slack on dlv-sl&lt;1&gt; (dlv-plant)"
    )
    assert "temperature 77" in text
    assert req.key == notifications(db)[0][6]


def test_test_receiver_reports_the_outcome(db, web):
    receiver(db, "dlv-web", web.url("/t"))
    out = db.execute("SELECT iotpipe.test_receiver('dlv-web')").fetchone()[0]
    assert out.startswith("sent: HTTP 200 in "), out
    (req,) = web.received()
    assert req.json["alerts"][0]["test"] is True and req.json["event"] == "test"
    web.behaviour = lambda n, path: (503, 0)
    out = db.execute("SELECT iotpipe.test_receiver('dlv-web')").fetchone()[0]
    assert out.startswith("failed: HTTP 503"), out
    receiver(db, "dlv-nobody", "http://127.0.0.1:1/")
    out = db.execute("SELECT iotpipe.test_receiver('dlv-nobody')").fetchone()[0]
    assert out.startswith("failed: Couldn't connect to server"), out
    with pytest.raises(psycopg.errors.NoDataFound, match='receiver "dlv-none"'):
        db.execute("SELECT iotpipe.test_receiver('dlv-none')")
    # nothing queued by a test
    assert notifications(db) == []


def test_a_renamed_receiver_keeps_its_outbox(db, web):
    web.behaviour = lambda n, path: (500, 0) if n == 1 else (200, 0)
    rule(db, "dlv-rename")
    receiver(db, "dlv-old", web.url())
    route(db, "dlv-old")
    ingest(db, [msg("dlv-rn1", 99)])
    wait_requests(web, 1)  # failed once: pending, retried later
    db.execute("UPDATE iotpipe.receivers SET name = 'dlv-new' WHERE name = 'dlv-old'")
    poll(
        lambda: notifications(db)[0][4] == "sent",
        15,
        what="the retry under the new name",
    )
    assert [(r[2], r[5]) for r in notifications(db)] == [("dlv-new", 2)]
    assert db.execute("SELECT receiver FROM iotpipe.routes").fetchall() == [
        ("dlv-new",)
    ]


def test_notifier_runs_only_while_a_receiver_is_enabled(db, web):
    poll(lambda: notifier(db) is None, 15, what="no notifier without receivers")
    receiver(db, "dlv-web", web.url())
    st = poll(lambda: (n := notifier(db)) and n[0] and n, 15, what="a notifier")
    assert st[1] in ("idle", "running")
    db.execute("UPDATE iotpipe.receivers SET enabled = false")
    poll(lambda: notifier(db) is None, 15, what="the notifier to go")


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kind,url,options,error",
    [
        ("webhook", "http://exa mple.com/x", {}, "url is not a valid URL"),
        ("webhook", "ftp://127.0.0.1/x", {}, "must be http:// or https://"),
        ("pager", "http://127.0.0.1/x", {}, 'unknown kind "pager"'),
        ("email", "smtp://", {"from": "a@b", "to": "c@d"}, "names no mail server"),
        (
            "email",
            None,
            {"from": "a@b", "to": "c@d"},
            "needs the url of its mail server",
        ),
        ("email", "https://127.0.0.1/", {"from": "a@b", "to": "c@d"}, "smtp://"),
        ("email", "smtp://127.0.0.1:25", {"to": "c@d"}, "needs options.from"),
        ("email", "smtp://127.0.0.1:25", {"from": "a@b", "to": []}, "names no address"),
        ("webhook", "http://127.0.0.1/", {"heders": {}}, 'unknown option "heders"'),
        ("webhook", "http://127.0.0.1/", {"headers": {"X": "a\r\nB: c"}}, "one line"),
        ("webhook", "http://127.0.0.1/", {"ca_file": "rel.pem"}, "absolute path"),
    ],
)
def test_bad_configuration_is_refused_at_insert(db, kind, url, options, error):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        receiver(db, "dlv-bad", url, kind=kind, options=options)
    assert error in str(e.value)
    assert str(e.value).startswith('invalid receiver "dlv-bad": ')


def test_unreachable_host_ends_failed_with_its_reason(db):
    rule(db, "dlv-unreach")
    receiver(db, "dlv-nowhere", "http://127.0.0.1:1/hook")
    route(db, "dlv-nowhere")
    ingest(db, [msg("dlv-u1", 99)])
    poll(lambda: notifications(db)[0][4] == "failed", 30, what="failed")
    assert (
        notifications(db)[0][7]
        == "gave up after 5 attempts: Couldn't connect to server"
    )
    assert notifier(db)[0] is not None, "the notifier still runs"


# ------------------------------------------------------------------ TLS


def test_tls_verified_unless_the_ca_file_is_configured(db):
    cert = SelfSignedCert()
    web = WebhookServer(tls_cert=cert).start()
    try:
        receiver(db, "dlv-tls", web.url())
        receiver(db, "dlv-tls-ca", web.url(), options={"ca_file": cert.cert})
        out = db.execute("SELECT iotpipe.test_receiver('dlv-tls')").fetchone()[0]
        assert out.startswith("failed: SSL peer certificate"), out
        out = db.execute("SELECT iotpipe.test_receiver('dlv-tls-ca')").fetchone()[0]
        assert out.startswith("sent: HTTP 200"), out
        # and through the notifier
        rule(db, "dlv-tls")
        route(db, "dlv-tls", position=1, cont=True)
        route(db, "dlv-tls-ca", position=2)
        ingest(db, [msg("dlv-t1", 99)])
        poll(
            lambda: {r[2]: r[4] for r in notifications(db)}
            == {"dlv-tls": "failed", "dlv-tls-ca": "sent"},
            30,
            what="unverified refused, verified delivered",
        )
        assert notifications(db, "receiver = 'dlv-tls'")[0][7].endswith(
            "SSL peer certificate or SSH remote key was not OK"
        )
    finally:
        web.stop()
        cert.remove()


# ------------------------------------------------------------------ e-mail


def test_email_over_starttls_with_auth_and_message_id(db):
    cert = SelfSignedCert()
    smtp = SmtpServer(cert, "alerts", "s3cret-smtp-pass").start()
    try:
        rule(db, "dlv-mail", severity="critical")
        receiver(
            db,
            "dlv-mail",
            f"smtp://127.0.0.1:{smtp.port}",
            kind="email",
            options={
                "from": "iotpipe <alerts@example.com>",
                "to": ["ops@example.com", "boss@example.com"],
                "username": "alerts",
                "password": "s3cret-smtp-pass",
                "ca_file": cert.cert,
            },
        )
        route(db, "dlv-mail")
        ingest(db, [msg("dlv-m1", 99)])
        poll(lambda: len(smtp.messages) >= 1, 30, what="the mail")
        ingest(db, [msg("dlv-m1", 10)])
        poll(lambda: len(smtp.messages) >= 2, 30, what="the resolve mail")
        rows = notifications(db)
        assert [r[4] for r in rows] == ["sent", "sent"]
        env = smtp.messages[0]
        assert env.mail_from == "alerts@example.com"
        assert env.rcpt_tos == ["ops@example.com", "boss@example.com"]
        text = env.content.decode()
        assert f"Message-ID: <{rows[0][6]}@iotpipe>" in text
        assert "Subject: [iotpipe] [FIRING] critical: dlv-mail on dlv-m1" in text
        assert '"sensor_id":"dlv-m1"' in text
        assert "[RESOLVED]" in smtp.messages[1].content.decode()
        assert db.execute(
            "SELECT status FROM iotpipe.notification_attempts ORDER BY 1"
        ).fetchall() == [(250,), (250,)]

        # a failing login: failed attempts with the reply, the password nowhere
        receiver(
            db,
            "dlv-mail-bad",
            f"smtp://127.0.0.1:{smtp.port}",
            kind="email",
            options={
                "from": "alerts@example.com",
                "to": "ops@example.com",
                "username": "alerts",
                "password": "wr0ng-pa55word-xyz",
                "ca_file": cert.cert,
            },
        )
        out = db.execute("SELECT iotpipe.test_receiver('dlv-mail-bad')").fetchone()[0]
        assert out.startswith("failed: SMTP 535: Login denied"), out
        assert smtp.auth_failures >= 1
        assert "wr0ng-pa55word-xyz" not in server_log()
        assert "s3cret-smtp-pass" not in server_log()
    finally:
        smtp.stop()
        cert.remove()


# ------------------------------------------------------------------ secrets

SECRETS = ["SECRET-URL-TOKEN-77", "SECRET-HEADER-88", "SECRET-SMTP-PASSWORD-99"]


@pytest.fixture
def roles(db):
    db.execute("DROP ROLE IF EXISTS dlv_op")
    db.execute("DROP ROLE IF EXISTS dlv_an")
    db.execute("CREATE ROLE dlv_op LOGIN IN ROLE iotpipe_operator")
    db.execute("CREATE ROLE dlv_an LOGIN IN ROLE iotpipe_analyst")
    yield
    db.execute("DROP ROLE dlv_op")
    db.execute("DROP ROLE dlv_an")


def readable_text(user):
    """Everything user can SELECT in iotpipe and iotpipe_dw, as one text."""
    out = []
    with connect(user=user) as c:
        rels = c.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('iotpipe', 'iotpipe_dw') AND c.relkind IN ('r', 'v', 'p')"
            "   AND NOT c.relispartition AND has_table_privilege(c.oid, 'SELECT')"
        ).fetchall()
        for (rel,) in rels:
            for row in c.execute(f"SELECT t::text FROM {rel} t").fetchall():
                out.append(row[0])
        for col in c.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'iotpipe' AND c.relname = 'receivers' AND a.attnum > 0"
            "   AND has_column_privilege(c.oid, a.attnum, 'SELECT')"
        ).fetchall():
            out.append(f"column {col[0]}")
    return "\n".join(out), [r[0] for r in rels]


def test_secrets_are_not_readable_logged_or_shown(db, web, roles):
    web.behaviour = lambda n, path: (500, 0)
    rule(db, "dlv-secret")
    receiver(
        db,
        "dlv-secret-web",
        web.url("/hook/SECRET-URL-TOKEN-77"),
        options={"headers": {"Authorization": "Bearer SECRET-HEADER-88"}},
    )
    receiver(
        db,
        "dlv-secret-mail",
        "smtp://127.0.0.1:1",
        kind="email",
        options={
            "from": "a@example.com",
            "to": "b@example.com",
            "username": "u",
            "password": "SECRET-SMTP-PASSWORD-99",
        },
    )
    route(db, "dlv-secret-web", cont=True)
    route(db, "dlv-secret-mail", position=1)
    ingest(db, [msg("dlv-sec1", 99)])
    poll(
        lambda: all(r[4] == "failed" for r in notifications(db))
        and len(notifications(db)) == 2,
        30,
        what="both deliveries failed",
    )
    # the secrets did reach the receiver (so they were really configured)
    assert web.received()[0].path == "/hook/SECRET-URL-TOKEN-77"
    assert web.received()[0].headers["Authorization"] == "Bearer SECRET-HEADER-88"
    # a refused update that carries a secret: the error and the log hold neither
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        db.execute(
            "UPDATE iotpipe.receivers SET url = 'ftp://SECRET-URL-TOKEN-77/'"
            " WHERE name = 'dlv-secret-web'"
        )
    assert "SECRET" not in str(e.value) and "SECRET" not in (
        e.value.diag.message_detail or ""
    )
    # a second receiver of the same name: refused before the primary key, whose
    # error would log the statement with its secrets
    with pytest.raises(psycopg.errors.UniqueViolation, match="already exists"):
        receiver(db, "dlv-secret-web", "http://127.0.0.1/SECRET-URL-TOKEN-77")
    db.execute("SELECT iotpipe.test_receiver('dlv-secret-mail')")

    for user in ("dlv_op", "dlv_an"):
        text, rels = readable_text(user)
        for s in SECRETS:
            assert s not in text, (user, s)
        assert "iotpipe.receivers" not in rels
        with (
            connect(user=user) as c,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            c.execute("SELECT url FROM iotpipe.receivers")
        with (
            connect(user=user) as c,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            c.execute("SELECT iotpipe.test_receiver('dlv-secret-web')")
    # operators see the receivers without secrets
    text, rels = readable_text("dlv_op")
    assert "iotpipe.receiver_overview" in rels and "dlv-secret-web" in text
    assert "iotpipe.notifications" in rels
    # status and the server log
    status = db.execute("SELECT s::text FROM iotpipe.status s").fetchall()
    log = server_log()
    for s in SECRETS:
        assert all(s not in r[0] for r in status)
        assert s not in log, s
