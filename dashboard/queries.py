"""Every SQL statement the dashboard, the PDF report and the benchmark run.

Rules that keep each page under a second with tens of millions of raw rows:
- the latest state of a sensor comes from iotpipe.sensors, never from the raw table;
- raw readings are only read per sensor through the (sensor_id, ts) index, over a short
  window ending at the sensor's own last_seen (LATERAL joins from iotpipe.sensors);
- history comes from the warehouse (iotpipe_dw.fact_sensor_hourly);
- alerts and dead letters are read through their primary keys / time indexes, with LIMITs.

Each function takes an open psycopg connection and returns a pandas DataFrame (or a
scalar); errors propagate, the pages turn them into messages (dashboard.ui).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import psycopg

from dashboard.db import query_df, query_one

# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------

KPI_SENSORS = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE last_ingested_at > now() - make_interval(secs => %(stale_s)s)) AS online,
       extract(epoch FROM now() - max(last_ingested_at))::float8 AS secs_since_last,
       max(last_seen) AS last_seen
  FROM iotpipe.sensors
"""

KPI_FIRING = """
SELECT severity, count(*) AS firing
  FROM iotpipe.alerts
 WHERE state = 'firing'
 GROUP BY severity
"""

# Ingest rate: the workers that write readings. A simulator producing into Kafka writes
# nothing itself (the Kafka workers ingest what it produced), so it is not counted twice.
KPI_RATE = """
WITH w AS (
    SELECT st.rate
      FROM iotpipe.status st
     WHERE st.kind IS DISTINCT FROM 'launcher'
       AND NOT (st.kind = 'simulator'
                AND coalesce((SELECT sink FROM iotpipe.simulator LIMIT 1), 'direct') = 'kafka')
)
SELECT coalesce(sum(rate), 0)::float8 AS per_s, count(*) AS ingest_workers FROM w
"""

# Cumulative counter sampled by the dashboard for "ingest rate over time".
TOTAL_READINGS = (
    "SELECT coalesce(sum(readings_total), 0)::bigint AS total FROM iotpipe.sensors"
)

LOCATIONS = "SELECT DISTINCT location FROM iotpipe.sensors WHERE location IS NOT NULL ORDER BY 1"

SENSOR_IDS = """
SELECT sensor_id FROM iotpipe.sensors
 WHERE %(location)s::text IS NULL OR location = %(location)s
 ORDER BY sensor_id LIMIT %(limit)s
"""

SENSOR_TABLE = """
SELECT s.sensor_id, s.location, s.last_seen, s.last_ingested_at,
       CASE WHEN s.last_ingested_at > now() - make_interval(secs => %(stale_s)s)
            THEN 'online' ELSE 'stale' END AS status,
       s.last_temperature AS temperature, s.last_humidity AS humidity, s.readings_total,
       spark.temps AS trend
  FROM iotpipe.sensors s
  LEFT JOIN LATERAL (
        SELECT array_agg(x.temperature ORDER BY x.ts) AS temps
          FROM (SELECT r.ts, r.temperature
                  FROM iotpipe.readings r
                 WHERE r.sensor_id = s.sensor_id
                   AND r.ts > s.last_seen - make_interval(secs => %(spark_s)s)
                   AND r.ts <= s.last_seen
                 ORDER BY r.ts DESC
                 LIMIT %(spark_n)s) x) spark ON true
 WHERE %(location)s::text IS NULL OR s.location = %(location)s
 ORDER BY (s.last_ingested_at > now() - make_interval(secs => %(stale_s)s)), s.sensor_id
 LIMIT %(limit)s
"""

SENSOR_SERIES = """
SELECT x.sensor_id, x.ts, x.temperature, x.humidity
  FROM (SELECT r.sensor_id, r.ts, r.temperature, r.humidity
          FROM iotpipe.readings r
         WHERE r.sensor_id = %(sensor)s
           AND r.ts > (SELECT last_seen FROM iotpipe.sensors WHERE sensor_id = %(sensor)s)
                      - make_interval(secs => %(window_s)s)
         ORDER BY r.ts DESC
         LIMIT %(max_points)s) x
 ORDER BY x.ts
"""

# One index range scan per sensor of the location (the LIMIT keeps the planner from
# flattening the LATERAL into a hash join over the whole raw table); the window ends at
# the location's latest reading, an InitPlan evaluated once.
LOCATION_SERIES = """
SELECT s.sensor_id,
       to_timestamp(floor(extract(epoch FROM r.ts) / %(bucket_s)s) * %(bucket_s)s) AS ts,
       avg(r.temperature) AS temperature, avg(r.humidity) AS humidity
  FROM iotpipe.sensors s
 CROSS JOIN LATERAL (
        SELECT r.ts, r.temperature, r.humidity
          FROM iotpipe.readings r
         WHERE r.sensor_id = s.sensor_id
           AND r.ts > (SELECT max(last_seen) FROM iotpipe.sensors WHERE location = %(location)s)
                      - make_interval(secs => %(window_s)s)
         ORDER BY r.ts DESC
         LIMIT %(per_sensor)s) r
 WHERE s.location = %(location)s
 GROUP BY 1, 2
 ORDER BY 2, 1
"""

# Threshold rules that apply to a sensor (sensor given) or to a location's sensors.
CHART_RULES = """
SELECT r.rule_id, r.name, r.kind, r.metric, r.op, r.threshold,
       coalesce(r.clear_threshold, r.threshold) AS clear_threshold, r.severity,
       r.sensor_id, r.location
  FROM iotpipe.alert_rules r
 WHERE r.enabled AND r.kind = 'threshold' AND r.metric = %(metric)s
   AND (r.location IS NULL OR r.location = %(location)s)
   AND (r.sensor_id IS NULL
        OR r.sensor_id = %(sensor)s
        OR (%(sensor)s::text IS NULL
            AND r.sensor_id IN (SELECT sensor_id FROM iotpipe.sensors WHERE location = %(location)s)))
 ORDER BY r.threshold
"""

CHART_ALERTS = """
SELECT a.alert_id, a.sensor_id, a.severity, a.state, a.value, a.started_at, a.resolved_at,
       r.name AS rule, r.kind, r.metric,
       -- where to draw the marker: the reading that fired it (threshold: the value itself)
       coalesce((to_jsonb(a) ->> 'reading')::float8, CASE WHEN r.kind = 'threshold' THEN a.value END) AS y
  FROM iotpipe.alerts a
  JOIN iotpipe.alert_rules r USING (rule_id)
 WHERE a.started_at >= %(since)s
   AND (a.sensor_id = %(sensor)s
        OR (%(sensor)s::text IS NULL
            AND a.sensor_id IN (SELECT sensor_id FROM iotpipe.sensors WHERE location = %(location)s)))
 ORDER BY a.started_at
 LIMIT 500
"""

# reading: the raw metric value that fired the alert (alert engine column, read through
# to_jsonb so that an older alerts table without it still works); value is the compared
# quantity (the reading, a change per minute, a z-score or seconds without data, by kind).
_ALERT_COLS = """a.alert_id, a.rule_id, r.name AS rule, r.kind, a.sensor_id, a.severity, a.state, a.value,
       (to_jsonb(a) ->> 'reading')::float8 AS reading,
       r.metric, r.op, r.threshold, a.started_at, a.resolved_at, a.acked_at, a.acked_by,
       (to_jsonb(a) ->> 'silenced')::bool AS silenced"""

ALERT_FEED = f"""
WITH firing AS (
    SELECT alert_id FROM iotpipe.alerts WHERE state = 'firing' ORDER BY alert_id DESC LIMIT %(limit)s
), recent AS (
    SELECT alert_id FROM iotpipe.alerts ORDER BY alert_id DESC LIMIT %(limit)s
), ids AS (
    SELECT alert_id FROM firing UNION SELECT alert_id FROM recent
)
SELECT {_ALERT_COLS}
  FROM ids
  JOIN iotpipe.alerts a USING (alert_id)
  LEFT JOIN iotpipe.alert_rules r ON r.rule_id = a.rule_id
 ORDER BY (a.state = 'firing') DESC, a.alert_id DESC
 LIMIT %(limit)s
"""

ALERTS_AFTER = f"""
SELECT {_ALERT_COLS}
  FROM iotpipe.alerts a
  LEFT JOIN iotpipe.alert_rules r ON r.rule_id = a.rule_id
 WHERE a.alert_id > %(after)s
 ORDER BY a.alert_id
 LIMIT 200
"""

# NOTIFY has no privileges: any role that can connect can send on iotpipe_alerts.
# A notification only names an alert; what is shown comes from iotpipe.alerts.
ALERTS_BY_ID = f"""
SELECT {_ALERT_COLS}
  FROM iotpipe.alerts a
  LEFT JOIN iotpipe.alert_rules r ON r.rule_id = a.rule_id
 WHERE a.alert_id = ANY(%(ids)s)
 ORDER BY a.alert_id
"""

MAX_ALERT_ID = "SELECT coalesce(max(alert_id), 0) FROM iotpipe.alerts"

ACK_ALERT = "SELECT iotpipe.ack_alert(%(alert_id)s, %(acked_by)s)"


def kpis(conn: psycopg.Connection, stale_s: float = 60.0) -> dict:
    """Operations KPI tiles: sensors online/total, firing alerts by severity, readings/s, age."""
    s = query_df(conn, KPI_SENSORS, {"stale_s": stale_s}).iloc[0]
    out = {
        "sensors_total": int(s["total"]),
        "sensors_online": int(s["online"]),
        "secs_since_last": None
        if pd.isna(s["secs_since_last"])
        else float(s["secs_since_last"]),
        "last_seen": s["last_seen"],
    }
    firing = query_df(conn, KPI_FIRING)
    counts = {sev: 0 for sev in ("critical", "warning", "info")}
    for _, row in firing.iterrows():
        counts[row["severity"]] = int(row["firing"])
    out["firing"] = counts
    rate = query_df(conn, KPI_RATE).iloc[0]
    out["readings_per_s"] = float(rate["per_s"])
    return out


def total_readings(conn) -> int:
    return int(query_one(conn, TOTAL_READINGS)[0])


def locations(conn) -> list[str]:
    return list(query_df(conn, LOCATIONS)["location"])


def sensor_ids(conn, location: str | None = None, limit: int = 5000) -> list[str]:
    return list(
        query_df(conn, SENSOR_IDS, {"location": location, "limit": limit})["sensor_id"]
    )


def sensor_table(
    conn,
    location: str | None = None,
    stale_s: float = 60.0,
    limit: int = 200,
    spark_s: float = 120.0,
    spark_n: int = 30,
) -> pd.DataFrame:
    return query_df(
        conn,
        SENSOR_TABLE,
        {
            "location": location,
            "stale_s": stale_s,
            "limit": limit,
            "spark_s": spark_s,
            "spark_n": spark_n,
        },
    )


def sensor_series(
    conn, sensor: str, window_s: float = 300.0, max_points: int = 5000
) -> pd.DataFrame:
    return query_df(
        conn,
        SENSOR_SERIES,
        {"sensor": sensor, "window_s": window_s, "max_points": max_points},
    )


def location_series(
    conn,
    location: str,
    window_s: float = 300.0,
    bucket_s: float = 5.0,
    per_sensor: int = 5000,
) -> pd.DataFrame:
    return query_df(
        conn,
        LOCATION_SERIES,
        {
            "location": location,
            "window_s": window_s,
            "bucket_s": bucket_s,
            "per_sensor": per_sensor,
        },
    )


def chart_rules(
    conn, metric: str, sensor: str | None, location: str | None
) -> pd.DataFrame:
    return query_df(
        conn, CHART_RULES, {"metric": metric, "sensor": sensor, "location": location}
    )


def chart_alerts(conn, since, sensor: str | None, location: str | None) -> pd.DataFrame:
    return query_df(
        conn, CHART_ALERTS, {"since": since, "sensor": sensor, "location": location}
    )


def alert_feed(conn, limit: int = 50) -> pd.DataFrame:
    return query_df(conn, ALERT_FEED, {"limit": limit})


def alerts_after(conn, after: int) -> pd.DataFrame:
    return query_df(conn, ALERTS_AFTER, {"after": after})


def max_alert_id(conn) -> int:
    return int(query_one(conn, MAX_ALERT_ID)[0])


def ack_alert(conn, alert_id: int, acked_by: str | None) -> None:
    """Acknowledge an alert through iotpipe.ack_alert(). acked_by None acknowledges as
    the login (session_user); another name takes iotpipe_admin (ack_alert refuses it
    otherwise, insufficient_privilege)."""
    conn.execute(ACK_ALERT, {"alert_id": int(alert_id), "acked_by": acked_by})


def alerts_by_id(conn, notes: list[dict]) -> pd.DataFrame:
    """The alerts that notifications name, as iotpipe.alerts has them: a forged
    notification (unknown id, or made-up fields) shows nothing of its own."""
    ids = []
    for n in notes:
        try:
            ids.append(int(n.get("alert_id")))
        except (TypeError, ValueError, AttributeError):
            continue
    if not ids:
        return pd.DataFrame()
    return query_df(conn, ALERTS_BY_ID, {"ids": ids})


# ---------------------------------------------------------------------------
# System
# ---------------------------------------------------------------------------

WORKERS = """
SELECT worker, kind, pid, state, started_at, messages, rows, rejected, rate,
       last_error, last_error_at, last_activity, restarts, detail
  FROM iotpipe.status
 ORDER BY worker
"""

KAFKA_LAG = "SELECT * FROM iotpipe.kafka_lag ORDER BY 1, 2"

ETL_RUNS = "SELECT * FROM iotpipe.etl_runs ORDER BY 1 DESC LIMIT %(limit)s"

DEAD_LETTER_REASONS = """
SELECT error AS reason, count(*) AS messages, max(received_at) AS last_seen,
       string_agg(DISTINCT source, ', ') AS sources
  FROM iotpipe.dead_letters
 WHERE received_at > now() - make_interval(hours => %(hours)s)
 GROUP BY error
 ORDER BY count(*) DESC
 LIMIT 50
"""

DEAD_LETTERS_RECENT = """
SELECT id, received_at, source, topic, partition, "offset", error AS reason,
       encode(substring(payload FROM 1 FOR 160), 'escape') AS payload, length(payload) AS bytes
  FROM iotpipe.dead_letters
 ORDER BY id DESC
 LIMIT %(limit)s
"""

DW_READINGS_PER_HOUR = """
SELECT hour_start, sum(readings)::bigint AS readings
  FROM iotpipe_dw.fact_sensor_hourly
 WHERE hour_start >= now() - make_interval(hours => %(hours)s)
 GROUP BY 1
 ORDER BY 1
"""


def workers(conn) -> pd.DataFrame:
    return query_df(conn, WORKERS)


def kafka_lag(conn) -> pd.DataFrame:
    """Kafka lag per partition (iotpipe.kafka_lag: committed offsets against watermarks)."""
    return query_df(conn, KAFKA_LAG)


def etl_runs(conn, limit: int = 20) -> pd.DataFrame:
    return query_df(conn, ETL_RUNS, {"limit": limit})


def dead_letter_reasons(conn, hours: int = 24) -> pd.DataFrame:
    return query_df(conn, DEAD_LETTER_REASONS, {"hours": hours})


def dead_letters_recent(conn, limit: int = 50) -> pd.DataFrame:
    return query_df(conn, DEAD_LETTERS_RECENT, {"limit": limit})


def dw_readings_per_hour(conn, hours: int = 48) -> pd.DataFrame:
    return query_df(conn, DW_READINGS_PER_HOUR, {"hours": hours})


# ---------------------------------------------------------------------------
# Alert delivery (issue 12): receivers without secrets, the outbox, failures
# ---------------------------------------------------------------------------

# iotpipe.receivers holds secrets and is not readable by operators: the view is.
RECEIVERS = """
SELECT name, kind, enabled, pending, sent, failed, last_sent_at, routes
  FROM iotpipe.receiver_overview
 ORDER BY name
"""

OUTBOX = """
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE state = 'sent') AS sent,
       count(*) FILTER (WHERE state = 'failed') AS failed
  FROM iotpipe.notifications
"""

DELIVERY_FAILURES = """
SELECT notification_id, alert_id, receiver, event, state, attempts, last_attempt_at,
       last_status, last_error AS reason
  FROM iotpipe.notifications
 WHERE last_error IS NOT NULL
 ORDER BY last_attempt_at DESC NULLS LAST, notification_id DESC
 LIMIT %(limit)s
"""

DELIVERIES_OF = """
SELECT alert_id, receiver, event, state
  FROM iotpipe.notifications
 WHERE alert_id = ANY(%(ids)s)
 ORDER BY alert_id, receiver, notification_id
"""


def receivers(conn) -> pd.DataFrame:
    return query_df(conn, RECEIVERS)


def outbox(conn) -> dict:
    row = conn.execute(OUTBOX).fetchone()
    return dict(zip(("pending", "due", "sent", "failed"), row))


def delivery_failures(conn, limit: int = 20) -> pd.DataFrame:
    return query_df(conn, DELIVERY_FAILURES, {"limit": limit})


def deliveries_of(conn, alert_ids: list[int]) -> dict[int, str]:
    """Per alert: where its notifications went ("ops: firing sent, resolved pending").

    An empty dict when delivery is not installed (an older extension)."""
    if not alert_ids:
        return {}
    try:
        rows = conn.execute(DELIVERIES_OF, {"ids": list(alert_ids)}).fetchall()
    except Exception:  # noqa: BLE001 - no delivery tables: nothing to show
        conn.rollback()
        return {}
    per = {}
    for alert_id, receiver, event, state in rows:
        per.setdefault(alert_id, {}).setdefault(receiver, []).append(f"{event} {state}")
    return {
        a: "; ".join(f"{r}: {', '.join(v)}" for r, v in recv.items())
        for a, recv in per.items()
    }


# ---------------------------------------------------------------------------
# Analytics (warehouse) and report
# ---------------------------------------------------------------------------

# fact_sensor_hourly carries its location_key, so no join through dim_sensor is needed;
# averages are weighted by the per-metric counts (temperature_n, humidity_n).
DW_HOURLY = """
SELECT h.hour_start, l.location,
       sum(h.readings)::bigint AS readings,
       sum(h.temperature_n)::bigint AS temperature_n,
       (sum(h.temperature_avg * h.temperature_n) / nullif(sum(h.temperature_n), 0))::float8 AS temperature_avg,
       min(h.temperature_min)::float8 AS temperature_min,
       max(h.temperature_max)::float8 AS temperature_max,
       sum(h.humidity_n)::bigint AS humidity_n,
       (sum(h.humidity_avg * h.humidity_n) / nullif(sum(h.humidity_n), 0))::float8 AS humidity_avg,
       sum(h.anomalies)::bigint AS anomalies,
       count(DISTINCT h.sensor_key)::int AS sensors
  FROM iotpipe_dw.fact_sensor_hourly h
  JOIN iotpipe_dw.dim_location l ON l.location_key = h.location_key
 WHERE h.hour_start >= %(t_from)s AND h.hour_start < %(t_to)s
   AND (%(locations)s::text[] IS NULL OR l.location = ANY (%(locations)s::text[]))
 GROUP BY 1, 2
 ORDER BY 1, 2
"""

# Completeness: sensor-hours with data divided by the sensor-hours between each sensor's
# first and last hour with data in the range (a sensor that went silent mid-range counts
# its gap; one that started late is not blamed for the hours before).
DW_COMPLETENESS = """
WITH per_sensor AS (
    SELECT h.sensor_key, h.location_key, count(*) AS hours_present,
           min(h.hour_start) AS first_hour, max(h.hour_start) AS last_hour
      FROM iotpipe_dw.fact_sensor_hourly h
     WHERE h.hour_start >= %(t_from)s AND h.hour_start < %(t_to)s
     GROUP BY h.sensor_key, h.location_key
)
SELECT l.location, count(DISTINCT p.sensor_key)::int AS sensors,
       sum(p.hours_present)::bigint AS hours_present,
       sum(extract(epoch FROM p.last_hour - p.first_hour) / 3600 + 1)::bigint AS hours_expected,
       (sum(p.hours_present) / nullif(sum(extract(epoch FROM p.last_hour - p.first_hour) / 3600 + 1), 0))::float8
           AS completeness
  FROM per_sensor p
  JOIN iotpipe_dw.dim_location l ON l.location_key = p.location_key
 WHERE %(locations)s::text[] IS NULL OR l.location = ANY (%(locations)s::text[])
 GROUP BY 1
 ORDER BY 1
"""

DW_LOCATIONS = "SELECT location FROM iotpipe_dw.dim_location ORDER BY 1"
DW_BOUNDS = "SELECT min(hour_start), max(hour_start) FROM iotpipe_dw.fact_sensor_hourly"


def _range(d_from, d_to) -> dict:
    """Dates are inclusive days (UTC); datetimes are taken as given (half-open)."""

    def as_ts(d, end=False):
        if isinstance(d, dt.datetime):
            return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
        t = dt.datetime.combine(d, dt.time(0), tzinfo=dt.timezone.utc)
        return t + dt.timedelta(days=1) if end else t

    return {"t_from": as_ts(d_from), "t_to": as_ts(d_to, end=True)}


def dw_hourly(conn, d_from, d_to, locations: list[str] | None = None) -> pd.DataFrame:
    params = _range(d_from, d_to) | {
        "locations": list(locations) if locations else None
    }
    return query_df(conn, DW_HOURLY, params)


def dw_completeness(
    conn, d_from, d_to, locations: list[str] | None = None
) -> pd.DataFrame:
    params = _range(d_from, d_to) | {
        "locations": list(locations) if locations else None
    }
    return query_df(conn, DW_COMPLETENESS, params)


def dw_locations(conn) -> list[str]:
    return list(query_df(conn, DW_LOCATIONS)["location"])


def dw_bounds(conn) -> tuple:
    return tuple(query_one(conn, DW_BOUNDS))


def _weighted(h: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Roll the hourly frame up to keys, averages weighted by their per-metric counts."""
    h = h.copy()
    h["t_w"] = h["temperature_avg"].fillna(0) * h["temperature_n"]
    h["h_w"] = h["humidity_avg"].fillna(0) * h["humidity_n"]
    g = h.groupby(keys, as_index=False).agg(
        readings=("readings", "sum"),
        temperature_n=("temperature_n", "sum"),
        humidity_n=("humidity_n", "sum"),
        t_w=("t_w", "sum"),
        h_w=("h_w", "sum"),
        temperature_min=("temperature_min", "min"),
        temperature_max=("temperature_max", "max"),
        anomalies=("anomalies", "sum"),
    )
    g["temperature_avg"] = g["t_w"] / g["temperature_n"].where(g["temperature_n"] > 0)
    g["humidity_avg"] = g["h_w"] / g["humidity_n"].where(g["humidity_n"] > 0)
    return g.drop(columns=["t_w", "h_w"])


def daily_from_hourly(hourly: pd.DataFrame) -> pd.DataFrame:
    """Daily trend per location from the hourly frame."""
    h = hourly.copy()
    h["day"] = pd.to_datetime(h["hour_start"], utc=True).dt.floor("D")
    return _weighted(h, ["day", "location"])


def heatmap_from_hourly(hourly: pd.DataFrame) -> pd.DataFrame:
    """Average temperature per location and hour of day (UTC)."""
    h = hourly.copy()
    h["hour"] = pd.to_datetime(h["hour_start"], utc=True).dt.hour
    return _weighted(h, ["location", "hour"])


# Report-only queries over a period [t_from, t_to).

ALERTS_IN_PERIOD = """
SELECT count(*)::bigint AS fired,
       count(*) FILTER (WHERE severity = 'critical')::bigint AS critical,
       count(*) FILTER (WHERE severity = 'warning')::bigint AS warning,
       count(*) FILTER (WHERE acked_at IS NOT NULL)::bigint AS acknowledged
  FROM iotpipe.alerts
 WHERE started_at >= %(t_from)s AND started_at < %(t_to)s
"""

TOP_ALERTS = """
SELECT r.name AS rule, a.sensor_id, a.severity, count(*)::bigint AS fired,
       max(a.value)::float8 AS max_value,
       sum(coalesce(a.resolved_at, least(now(), %(t_to)s)) - a.started_at) AS firing_time
  FROM iotpipe.alerts a
  LEFT JOIN iotpipe.alert_rules r USING (rule_id)
 WHERE a.started_at >= %(t_from)s AND a.started_at < %(t_to)s
 GROUP BY 1, 2, 3
 ORDER BY (a.severity = 'critical') DESC, count(*) DESC, 4 DESC
 LIMIT %(limit)s
"""

DEAD_LETTERS_IN_PERIOD = """
SELECT error AS reason, count(*)::bigint AS messages
  FROM iotpipe.dead_letters
 WHERE received_at >= %(t_from)s AND received_at < %(t_to)s
 GROUP BY error
 ORDER BY count(*) DESC
 LIMIT %(limit)s
"""


def alerts_in_period(conn, t_from, t_to) -> dict:
    return (
        query_df(conn, ALERTS_IN_PERIOD, {"t_from": t_from, "t_to": t_to})
        .iloc[0]
        .to_dict()
    )


def top_alerts(conn, t_from, t_to, limit: int = 10) -> pd.DataFrame:
    return query_df(conn, TOP_ALERTS, {"t_from": t_from, "t_to": t_to, "limit": limit})


DEAD_LETTERS_TOTAL_IN_PERIOD = """
SELECT count(*)::bigint FROM iotpipe.dead_letters WHERE received_at >= %(t_from)s AND received_at < %(t_to)s
"""


def dead_letters_total_in_period(conn, t_from, t_to) -> int:
    return int(
        query_one(conn, DEAD_LETTERS_TOTAL_IN_PERIOD, {"t_from": t_from, "t_to": t_to})[
            0
        ]
    )


def dead_letters_in_period(conn, t_from, t_to, limit: int = 10) -> pd.DataFrame:
    return query_df(
        conn, DEAD_LETTERS_IN_PERIOD, {"t_from": t_from, "t_to": t_to, "limit": limit}
    )
