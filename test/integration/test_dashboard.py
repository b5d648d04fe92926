"""The Streamlit dashboard and the PDF report against the suite's real cluster.

- AppTest per page (Operations, Analytics, System): no exception, KPI values equal to
  what SQL says, the sensors / alerts / dead letters we ingested are shown, an
  acknowledgment from the page reaches iotpipe.alerts;
- the unreachable-database and missing-extension cases: a message, no traceback;
- a real browser: dashboard/run.sh on a free port, headless Chromium (Debian's, through
  chromedriver) loads each page, checks visible text, saves screenshots to docs/img/,
  sees a new critical alert appear live, and clicks an acknowledgment that reaches the
  database;
- the report CLI writes a PDF whose text (pdftotext) holds the expected sections.

The dashboard logs in as iotpipe_dashboard, a LOGIN member of iotpipe_operator, and
switches to the operator role: every query here runs with the operator's privileges.
"""

import datetime as dt
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import DB, DIR, PORT, ROOT, connect, poll

APP = os.path.join(ROOT, "dashboard", "app.py")
IMG = os.path.join(ROOT, "docs", "img")
USER = "iotpipe_dashboard"
URL = f"postgresql://{USER}@127.0.0.1:{PORT}/{DB}"
RULE = "dash overheating"
LOC1, LOC2 = "dash/line-1", "dash/line-2"
SENSORS = [f"dash-{i:04d}" for i in range(1, 7)]

sys.path.insert(0, ROOT)


def iso(t: dt.datetime) -> str:
    return (
        t.astimezone(dt.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def msg(sensor, t, temperature, humidity=45.0, location=None):
    loc = location or (LOC1 if int(sensor[-4:]) <= 3 else LOC2)
    return json.dumps(
        {
            "sensor_id": sensor,
            "ts": iso(t),
            "temperature": temperature,
            "humidity": humidity,
            "location": loc,
        }
    )


def ingest(db, payloads):
    return db.execute("SELECT * FROM iotpipe.ingest_json(%s)", (payloads,)).fetchone()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fire_alert(db, sensor, value):
    """Readings above the rule's threshold until the alert engine (which fires inside the
    ingest transaction) has fired; returns the firing alert's id."""

    def fired():
        ingest(db, [msg(sensor, dt.datetime.now(dt.timezone.utc), value)])
        return db.execute(
            "SELECT a.alert_id FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id) "
            "WHERE r.name = %s AND a.sensor_id = %s AND a.state = 'firing'",
            (RULE, sensor),
        ).fetchone()

    return poll(
        fired,
        timeout=15,
        interval=0.5,
        what=f"the alert engine to fire {RULE} on {sensor}",
    )[0]


@pytest.fixture(scope="module")
def dash():
    """Deterministic dashboard data: 6 sensors in two locations, a rule, two alerts, dead letters."""
    db = connect()
    db.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: not db.execute(
            "SELECT 1 FROM iotpipe.status WHERE worker = 'simulator'"
        ).fetchone(),
        timeout=20,
        what="the simulator to stop",
    )
    if not db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (USER,)).fetchone():
        db.execute(f"CREATE ROLE {USER} LOGIN IN ROLE iotpipe_operator")
    db.execute("DELETE FROM iotpipe.alert_rules WHERE name = %s", (RULE,))
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold, severity)"
        " VALUES (%s, 'threshold', 'temperature', %s, '>', 80, 70, 'critical')",
        (RULE, LOC1),
    )
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for k in range(60, 0, -1):  # a minute of history, one reading a second per sensor
        t = now - dt.timedelta(seconds=k)
        for i, s in enumerate(SENSORS):
            rows.append(msg(s, t, 20.0 + i + (k % 7) * 0.3, 40.0 + i))
    acc, rej = ingest(db, rows)
    assert (acc, rej) == (len(rows), 0)
    # three days of history, a reading every 15 minutes, for the warehouse pages and the report
    hist = []
    start = (now - dt.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    t = start
    while t < now - dt.timedelta(minutes=5):
        for i, s in enumerate(SENSORS):
            daily = 3.0 * math.sin(2 * math.pi * (t.hour + t.minute / 60) / 24)
            hist.append(
                msg(s, t, round(20.0 + 2 * i + daily, 2), round(45.0 - daily, 2))
            )
        t += dt.timedelta(minutes=15)
    for k in range(0, len(hist), 5000):
        assert ingest(db, hist[k : k + 5000])[1] == 0
    ingest(db, ["not json at all", '{"sensor_id": "dash-0001"}'])
    # Kafka offsets and watermarks of a topic no broker serves: the System page's lag table
    db.execute("DELETE FROM iotpipe.kafka_offsets WHERE topic = 'dash-test'")
    db.execute(
        "INSERT INTO iotpipe.kafka_offsets (topic, partition, next_offset) VALUES ('dash-test', 0, 100), ('dash-test', 1, 250)"
    )
    db.execute("DELETE FROM iotpipe.kafka_watermarks WHERE topic = 'dash-test'")
    db.execute(
        "INSERT INTO iotpipe.kafka_watermarks (topic, partition, low_watermark, high_watermark)"
        " VALUES ('dash-test', 0, 0, 130), ('dash-test', 1, 0, 250)"
    )
    a1 = fire_alert(db, "dash-0001", 95.5)  # acknowledged from AppTest
    a2 = fire_alert(db, "dash-0002", 91.0)  # acknowledged in the browser
    db.execute("SELECT iotpipe.run_etl()")
    # alert delivery (issue 12): a receiver (disabled: nothing is sent) with a secret in
    # its URL, a1 delivered to it, a2 failed there with its reason
    db.execute("DELETE FROM iotpipe.notifications WHERE receiver = 'dash-hook'")
    db.execute("DELETE FROM iotpipe.receivers WHERE name = 'dash-hook'")
    db.execute(
        "INSERT INTO iotpipe.receivers (name, kind, url, options, enabled) VALUES"
        " ('dash-hook', 'webhook', 'https://127.0.0.1:1/dash-SECRET-T0K3N',"
        '  \'{"headers": {"Authorization": "dash-SECRET-HEADER"}}\', false)'
    )
    db.execute(
        "INSERT INTO iotpipe.routes (receiver, rule) VALUES ('dash-hook', %s)", (RULE,)
    )
    db.execute(
        "INSERT INTO iotpipe.notifications (alert_id, receiver, event, state, attempts, sent_at,"
        " last_attempt_at, last_status, last_error, payload) VALUES"
        " (%s, 'dash-hook', 'firing', 'sent', 1, now(), now(), 200, NULL, '{}'),"
        " (%s, 'dash-hook', 'firing', 'failed', 10, NULL, now(), 500,"
        "  'gave up after 10 attempts: HTTP 500', '{}')",
        (a1, a2),
    )
    yield {"db": db, "alerts": (a1, a2)}
    db.execute("DELETE FROM iotpipe.notifications WHERE receiver = 'dash-hook'")
    db.execute("DELETE FROM iotpipe.receivers WHERE name = 'dash-hook'")
    db.execute("DELETE FROM iotpipe.kafka_offsets WHERE topic = 'dash-test'")
    db.execute("DELETE FROM iotpipe.kafka_watermarks WHERE topic = 'dash-test'")
    db.execute(
        "UPDATE iotpipe.alert_rules SET enabled = false WHERE name = %s", (RULE,)
    )
    db.close()


@pytest.fixture(autouse=True, scope="module")
def _restore_env():
    saved = os.environ.get("IOTPIPE_DASHBOARD_URL")
    yield
    if saved is None:
        os.environ.pop("IOTPIPE_DASHBOARD_URL", None)
    else:
        os.environ["IOTPIPE_DASHBOARD_URL"] = saved


def app_test(url=URL):
    from streamlit.testing.v1 import AppTest

    os.environ["IOTPIPE_DASHBOARD_URL"] = url
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["stale_s"] = (
        86400  # deterministic: everything seen today is online
    )
    return at


def run_page(at, page=None):
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at):
    return {m.label: m.value for m in at.metric}


def texts(at):
    return "\n".join(
        [m.value for m in at.markdown]
        + [e.value for e in at.info]
        + [e.value for e in at.error]
        + [e.value for e in at.warning]
    )


def sql_kpis(db):
    total, online = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE last_ingested_at > now() - interval '86400 s') FROM iotpipe.sensors"
    ).fetchone()
    out = {"Sensors online": f"{online} / {total}"}
    for sev in ("critical", "warning", "info"):
        n = db.execute(
            "SELECT count(*) FROM iotpipe.alerts WHERE state = 'firing' AND severity = %s",
            (sev,),
        ).fetchone()[0]
        out[f"{sev.capitalize()} alerts"] = str(n)
    return out


def test_operations_page(dash):
    db = dash["db"]
    # the KPI tiles show what SQL says (compared around the page run: a timer of another
    # test's leftover rule may fire in between, then the comparison is repeated)
    for _ in range(3):
        before = sql_kpis(db)
        at = run_page(app_test())
        m = metrics(at)
        shown = {k: m[k] for k in before}
        if shown == before == sql_kpis(db):
            break
    assert shown == sql_kpis(db)
    assert m["Critical alerts"] != "0"
    assert "Readings/s" in m and "Since last reading" in m

    # the sensor table, filtered to our location, holds our sensors with SQL's latest values
    at.selectbox(key="ops_location").set_value(LOC1)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["sensor_id"]) == {"dash-0001", "dash-0002", "dash-0003"}
    latest = dict(
        db.execute(
            "SELECT sensor_id, last_temperature FROM iotpipe.sensors WHERE location = %s",
            (LOC1,),
        ).fetchall()
    )
    for _, r in table.iterrows():
        assert r["temperature"] == pytest.approx(latest[r["sensor_id"]])
        assert len(r["trend"]) > 0

    # the alert feed lists both alerts with an Ack button; acknowledging reaches the table
    a1, a2 = dash["alerts"]
    feed = texts(at)
    assert RULE in feed and "dash-0001" in feed
    labels = [b.label for b in at.button]
    assert f"Ack #{a1}" in labels and f"Ack #{a2}" in labels
    # an operator login cannot acknowledge under another name: refused, said so
    at.session_state["ack_as"] = "apptest"
    at.button(key=f"ack-{a1}").click()
    at.run()
    assert not at.exception
    assert "only iotpipe_admin may acknowledge for another user" in texts(at).replace(
        "\\", ""
    )  # as displayed: Markdown escapes removed
    acked_at, acked_by = db.execute(
        "SELECT acked_at, acked_by FROM iotpipe.alerts WHERE alert_id = %s", (a1,)
    ).fetchone()
    assert acked_at is None and acked_by is None
    # with the field empty it acknowledges as the login
    at.session_state["ack_as"] = ""
    at.button(key=f"ack-{a1}").click()
    at.run()
    assert not at.exception
    acked_at, acked_by = db.execute(
        "SELECT acked_at, acked_by FROM iotpipe.alerts WHERE alert_id = %s", (a1,)
    ).fetchone()
    assert acked_at is not None and acked_by == USER
    assert f"Ack #{a1}" not in [b.label for b in at.button]

    # the live chart: our location's series with the rule drawn (its caption counts it)
    at.radio(key="chart_mode").set_value("Location")
    at.run()
    assert not at.exception
    assert "1 threshold rule(s) drawn" in texts(at) or any(
        "1 threshold rule(s)" in c.value for c in at.caption
    )


def test_analytics_page(dash):
    db = dash["db"]
    at = run_page(app_test(), "pages/analytics.py")
    lo, hi = db.execute(
        "SELECT min(hour_start), max(hour_start) FROM iotpipe_dw.fact_sensor_hourly"
    ).fetchone()
    if hi is None:
        assert "warehouse is empty" in texts(at)
        return
    last = hi.astimezone(dt.timezone.utc).date()
    first = max(lo.astimezone(dt.timezone.utc).date(), last - dt.timedelta(days=6))
    t_from = dt.datetime.combine(first, dt.time(0), tzinfo=dt.timezone.utc)
    t_to = dt.datetime.combine(last, dt.time(0), tzinfo=dt.timezone.utc) + dt.timedelta(
        days=1
    )
    readings, anomalies = db.execute(
        "SELECT coalesce(sum(readings), 0), coalesce(sum(anomalies), 0) FROM iotpipe_dw.fact_sensor_hourly"
        " WHERE hour_start >= %s AND hour_start < %s",
        (t_from, t_to),
    ).fetchone()
    m = metrics(at)
    assert m["Readings"] == f"{int(readings):,}"
    assert m["Anomalies"] == f"{int(anomalies):,}"
    assert "Completeness" in m
    assert len(at.tabs) == 4
    kinds = {type(e).__name__ for e in at.main}
    assert at.get("download_button") or "download_button" in str(at.main), kinds


def test_system_page(dash):
    db = dash["db"]
    at = run_page(app_test(), "pages/system.py")
    m = metrics(at)
    running, workers = db.execute(
        "SELECT count(*) FILTER (WHERE state = 'running'), count(*) FROM iotpipe.status"
    ).fetchone()
    assert m["Workers running"] == f"{running} / {workers}"
    total = db.execute(
        "SELECT coalesce(sum(readings_total), 0) FROM iotpipe.sensors"
    ).fetchone()[0]
    assert m["Readings ingested"] == f"{total:,}"
    frames = [d.value for d in at.dataframe]
    assert any("worker" in f.columns and "launcher" in set(f["worker"]) for f in frames)
    ours = db.execute(
        "SELECT error FROM iotpipe.dead_letters WHERE payload = convert_to('not json at all', 'UTF8')"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]
    shown = set().union(*[set(f["reason"]) for f in frames if "reason" in f.columns])
    assert ours in shown
    assert "Kafka lag per partition" in [h.value for h in at.subheader]
    lag = [
        f for f in frames if "partition" in f.columns and "dash-test" in set(f["topic"])
    ]
    assert lag, "the Kafka partitions are listed"
    if "lag" in lag[0].columns:
        want = dict(
            db.execute(
                "SELECT partition, lag FROM iotpipe.kafka_lag WHERE topic = 'dash-test'"
            ).fetchall()
        )
        got = {
            int(r["partition"]): int(r["lag"])
            for _, r in lag[0][lag[0]["topic"] == "dash-test"].iterrows()
        }
        assert got == want == {0: 30, 1: 0}
        total = db.execute("SELECT sum(lag) FROM iotpipe.kafka_lag").fetchone()[0]
        assert m["Total lag (messages)"] == f"{int(total):,}"
    assert "ETL runs" in [h.value for h in at.subheader]


def test_delivery_on_the_system_and_operations_pages(dash):
    db = dash["db"]
    a1, a2 = dash["alerts"]
    at = run_page(app_test(), "pages/system.py")
    m = metrics(at)
    pending, sent, failed = db.execute(
        "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'sent'),"
        " count(*) FILTER (WHERE state = 'failed') FROM iotpipe.notifications"
    ).fetchone()
    assert m["Outbox pending"] == f"{pending:,}"
    assert m["Notifications sent"] == f"{sent:,}"
    assert m["Notifications failed"] == f"{failed:,}"
    assert "Alert delivery" in [h.value for h in at.subheader]
    frames = [d.value for d in at.dataframe]
    rcv = [f for f in frames if "name" in f.columns and "dash-hook" in set(f["name"])]
    assert rcv, "the receiver is listed"
    assert "url" not in rcv[0].columns and "options" not in rcv[0].columns
    row = rcv[0][rcv[0]["name"] == "dash-hook"].iloc[0]
    assert (row["kind"], int(row["sent"]), int(row["failed"])) == ("webhook", 1, 1)
    reasons = [f for f in frames if "reason" in f.columns and "receiver" in f.columns]
    assert reasons and "gave up after 10 attempts: HTTP 500" in set(
        reasons[0]["reason"]
    )
    everything = "\n".join(f.to_csv() for f in frames) + texts(at)
    assert "SECRET" not in everything
    # the Operations feed says whether and where each alert went
    at = run_page(app_test())
    feed = texts(at).replace("\\", "")  # as displayed: Markdown escapes removed
    assert f"#{a1}" in feed and "delivery: dash-hook: firing sent" in feed
    assert "delivery: dash-hook: firing failed" in feed
    assert "SECRET" not in feed


def test_unreachable_database():
    port = free_port()  # nothing listens there
    for page in (None, "pages/analytics.py", "pages/system.py"):
        at = run_page(app_test(f"postgresql://{USER}@127.0.0.1:{port}/{DB}"), page)
        assert any("Database unreachable" in e.value for e in at.error), [
            e.value for e in at.error
        ]


def test_configuration(dash):
    """No URL at all: a message saying how to configure; the URL from secrets.toml works."""
    from streamlit.testing.v1 import AppTest

    os.environ.pop("IOTPIPE_DASHBOARD_URL", None)
    at = run_page(AppTest.from_file(APP, default_timeout=60))
    assert any("No database configured" in e.value for e in at.error)
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["connections"] = {"iotpipe": {"url": URL}}
    run_page(at, "pages/system.py")
    assert not at.error and "Workers running" in metrics(at)


def test_data_is_shown_as_text_not_markdown(dash):
    """Device-chosen sensor ids and admin-chosen rule names are data: no link, image,
    emphasis or colour directive of theirs reaches the page's Markdown."""
    from dashboard import ui

    db = dash["db"]
    evil_sensor = "![x](http://127.0.0.1:9/s.png)"
    evil_rule = "[r](http://127.0.0.1:9/) **bold** :red[x] $x$"
    db.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold,"
        " clear_threshold, severity) VALUES (%s, 'threshold', 'temperature', %s, '>', 80, 70,"
        " 'critical')",
        (evil_rule, evil_sensor),
    )
    try:

        def fired():
            reading = json.dumps(
                {
                    "sensor_id": evil_sensor,
                    "ts": iso(dt.datetime.now(dt.timezone.utc)),
                    "temperature": 99.0,
                    "location": "[loc](http://127.0.0.1:9/)",
                }
            )
            ingest(db, [reading])
            return db.execute(
                "SELECT a.alert_id FROM iotpipe.alerts a JOIN iotpipe.alert_rules r"
                " USING (rule_id) WHERE r.name = %s AND a.state = 'firing'",
                (evil_rule,),
            ).fetchone()

        aid = poll(fired, timeout=15, interval=0.5, what="the hostile alert")[0]
        at = run_page(app_test())
        lines = [m.value for m in at.markdown if f"#{aid} " in m.value]
        assert lines, texts(at)
        line = lines[0]
        assert ui.md(evil_sensor) in line and ui.md(evil_rule) in line, line
        assert evil_sensor not in line and "](http" not in line, line
        assert ":red[" not in line and "**bold**" not in line, line
        # the escaping is exact: every special character of the data is escaped once
        assert ui.md("a*b_c[d](e)!f:g") == r"a\*b\_c\[d\]\(e\)\!f\:g"
    finally:
        db.execute("DELETE FROM iotpipe.alert_rules WHERE name = %s", (evil_rule,))
        db.execute("DELETE FROM iotpipe.alerts WHERE sensor_id = %s", (evil_sensor,))
        db.execute("DELETE FROM iotpipe.readings WHERE sensor_id = %s", (evil_sensor,))
        db.execute("DELETE FROM iotpipe.sensors WHERE sensor_id = %s", (evil_sensor,))


def test_extension_missing():
    c = connect("postgres")
    try:
        assert (
            c.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'iotpipe'"
            ).fetchone()[0]
            == 0
        )
    finally:
        c.close()
    for page in (None, "pages/analytics.py", "pages/system.py"):
        at = run_page(
            app_test(f"postgresql://postgres@127.0.0.1:{PORT}/postgres"), page
        )
        assert any("extension is not installed" in e.value for e in at.error), [
            e.value for e in at.error
        ]


def test_extension_waiting_for_update():
    """A database still at 0.1.0 under the newer library: every page says so."""
    with connect("postgres") as c:
        c.execute("DROP DATABASE IF EXISTS iotpipe_dash_old")
        c.execute("CREATE DATABASE iotpipe_dash_old")
    try:
        with connect("iotpipe_dash_old") as c:
            c.execute("CREATE EXTENSION iotpipe VERSION '0.1.0'")
            library = c.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'iotpipe'"
            ).fetchone()[0]
        assert library != "0.1.0"
        for page in (None, "pages/analytics.py", "pages/system.py"):
            at = run_page(
                app_test(f"postgresql://postgres@127.0.0.1:{PORT}/iotpipe_dash_old"),
                page,
            )
            want = (
                f"iotpipe 0.1.0 is installed, but the server runs the {library} library"
            )
            assert any(want in e.value for e in at.error), [e.value for e in at.error]
            assert any("ALTER EXTENSION iotpipe UPDATE" in e.value for e in at.error)
    finally:
        with connect("postgres") as c:
            c.execute("DROP DATABASE IF EXISTS iotpipe_dash_old WITH (FORCE)")


# ---------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(dash):
    port = free_port()
    log = open(os.path.join(DIR, "dashboard.log"), "w")
    env = dict(os.environ, IOTPIPE_DASHBOARD_URL="")
    proc = subprocess.Popen(
        [os.path.join(ROOT, "dashboard", "run.sh"), "--url", URL, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    import urllib.request

    def healthy():
        assert proc.poll() is None, open(os.path.join(DIR, "dashboard.log")).read()
        try:
            return (
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ).read()
                == b"ok"
            )
        except OSError:
            return False

    poll(healthy, timeout=60, interval=0.3, what="streamlit to serve")
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1600,1300",
        "--hide-scrollbars",
    ):
        opts.add_argument(a)
    d = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
        options=opts,
    )
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def body_text(d):
    from selenium.webdriver.common.by import By

    try:
        return d.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001 - page re-rendering
        return ""


def wait_text(d, *needles, timeout=30):
    return poll(
        lambda: all(n in body_text(d) for n in needles) and body_text(d),
        timeout=timeout,
        interval=0.3,
        what=f"the page to show {needles}",
    )


def test_browser(dash, server, browser):
    from selenium.webdriver.common.by import By

    db = dash["db"]
    os.makedirs(IMG, exist_ok=True)
    d = browser
    a1, a2 = dash["alerts"]

    # Operations: KPI labels, an alert with its sensor, the live LISTEN feed
    d.set_window_size(1600, 1450)
    d.get(server)
    wait_text(
        d,
        "Operations",
        "Sensors online",
        "Critical alerts",
        "Readings/s",
        "Since last reading",
        RULE,
        "dash-0002",
        f"Ack #{a2}",
        "live: LISTEN iotpipe_alerts",
    )
    # forged notifications (NOTIFY has no privileges): an unknown alert id, and a
    # real id with made-up fields; then a real alert, so the listener has read both
    db.execute(
        "SELECT pg_notify('iotpipe_alerts', %s), pg_notify('iotpipe_alerts', %s)",
        (
            json.dumps(
                {"alert_id": 987654321, "state": "firing", "severity": "critical",
                 "rule": "FORGED-RULE", "sensor_id": "FORGED-SENSOR"}
            ),
            json.dumps(
                {"alert_id": a1, "state": "firing", "severity": "critical",
                 "rule": "FORGED-OVERRIDE", "sensor_id": "FORGED-SENSOR"}
            ),
        ),
    )  # fmt: skip
    # a new critical alert appears by itself (NOTIFY -> listener thread -> fragment)
    a3 = fire_alert(db, "dash-0003", 99.0)
    wait_text(
        d, f"#{a3}", f"Critical alert #{a3}", timeout=20
    )  # in the feed, and a toast
    shown = body_text(d)
    assert "FORGED" not in shown and "987654321" not in shown
    assert "delivery: dash-hook: firing sent" in shown  # where a1 went
    time.sleep(
        2
    )  # let the charts finish drawing for the screenshot  # let the chart finish drawing for the screenshot
    d.save_screenshot(os.path.join(IMG, "operations.png"))

    # acknowledge alert a2 in the browser: it reaches iotpipe.alerts
    def click_ack():
        for b in d.find_elements(By.TAG_NAME, "button"):
            try:
                if b.text.strip() == f"Ack #{a2}":
                    b.click()
                    return True
            except Exception:  # noqa: BLE001 - stale element during a refresh: retry
                return False
        return False

    poll(click_ack, timeout=20, interval=0.3, what=f"the Ack #{a2} button")
    row = poll(
        lambda: db.execute(
            "SELECT acked_at, acked_by FROM iotpipe.alerts WHERE alert_id = %s AND acked_at IS NOT NULL",
            (a2,),
        ).fetchone(),
        timeout=20,
        what=f"alert {a2} to be acknowledged",
    )
    assert row[1] == USER
    wait_text(d, f"acked by {USER}", timeout=20)

    # Analytics
    d.set_window_size(1600, 1150)
    d.get(server + "analytics")
    wait_text(d, "Analytics", "Readings", "Completeness", "Download report (PDF)")
    time.sleep(2)  # let the charts finish drawing for the screenshot
    d.save_screenshot(os.path.join(IMG, "analytics.png"))
    # the PDF button builds the report on click and the browser downloads it
    downloads = os.path.join(DIR, "downloads")
    shutil.rmtree(downloads, ignore_errors=True)
    os.makedirs(downloads)
    d.execute_cdp_cmd(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": downloads},
    )

    def click_pdf():
        for b in d.find_elements(By.TAG_NAME, "button"):
            if b.text.strip() == "Download report (PDF)":
                b.click()
                return True
        return False

    poll(click_pdf, timeout=10, interval=0.3, what="the PDF button")

    def downloaded():
        done = [f for f in os.listdir(downloads) if f.endswith(".pdf")]
        return done and os.path.join(downloads, done[0])

    pdf = poll(downloaded, timeout=30, interval=0.3, what="the PDF download")
    with open(pdf, "rb") as f:
        assert f.read(5) == b"%PDF-"

    # System
    d.set_window_size(1600, 2050)
    d.get(server + "system")
    wait_text(
        d,
        "System",
        "Workers running",
        "Workers",
        "Kafka lag per partition",
        "ETL runs",
        "Dead letters",
        "Rejected messages by reason",
        "Alert delivery",
        "Outbox pending",
        "Notifications failed",
        "Last delivery failures, with their reasons",
    )
    assert "SECRET" not in body_text(d)
    time.sleep(2)  # let the charts finish drawing for the screenshot
    d.save_screenshot(os.path.join(IMG, "system.png"))
    assert "Traceback" not in body_text(d)


# ---------------------------------------------------------------------------
# Report CLI
# ---------------------------------------------------------------------------


def test_report_cli(dash, tmp_path):
    today = dt.datetime.now(dt.timezone.utc).date()
    out = tmp_path / "report.pdf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard.report",
            "--from",
            str(today - dt.timedelta(days=1)),
            "--to",
            str(today),
            "-o",
            str(out),
            "--url",
            URL,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    text = subprocess.run(
        ["pdftotext", "-layout", str(out), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for section in (
        "iotpipe report",
        "Key figures",
        "Charts per location",
        "Top alerts",
        "Data quality",
    ):
        assert section in text, section
    assert RULE in text  # top alerts
    assert "Alerts fired" in text
    assert "invalid JSON" in text  # dead letters by reason
    # a picture of the first page for the docs
    os.makedirs(IMG, exist_ok=True)
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "80",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(out),
            os.path.join(IMG, "report-page1"),
        ],
        check=True,
    )

    # unreachable database: a message and exit code 2, no traceback
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard.report",
            "--from",
            str(today),
            "--to",
            str(today),
            "-o",
            str(tmp_path / "x.pdf"),
            "--url",
            f"postgresql://{USER}@127.0.0.1:{free_port()}/{DB}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 2 and "unreachable" in r.stderr and "Traceback" not in r.stderr
    )
