"""Operations: live KPIs, sensors, a live chart with rule bands and alert markers, the alert feed."""

import datetime as dt

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import db
from dashboard import queries as q
from dashboard import ui

st.title("Operations")
c = ui.page_guard()

SEVERITY_COLORS = {"critical": "#d1242f", "warning": "#d4a72c", "info": "#1f6feb"}
SEVERITY_BADGES = {
    "critical": ":red-badge[critical]",
    "warning": ":orange-badge[warning]",
    "info": ":blue-badge[info]",
}


def stale_s() -> float:
    return float(st.session_state.get("stale_s") or 30)


@st.fragment(run_every=ui.LIVE_REFRESH_S)
def kpi_tiles():
    with ui.section("the KPIs"):
        c = ui.conn()
        k = q.kpis(c, stale_s())
        try:
            ui.rate_sampler().add(q.total_readings(c), k["readings_per_s"])
        except Exception:  # noqa: BLE001 - the sampler is best effort
            pass
        cols = st.columns(6)
        cols[0].metric(
            "Sensors online", f"{k['sensors_online']} / {k['sensors_total']}"
        )
        cols[1].metric("Critical alerts", k["firing"]["critical"])
        cols[2].metric("Warning alerts", k["firing"]["warning"])
        cols[3].metric("Info alerts", k["firing"]["info"])
        rate = k["readings_per_s"]
        if (
            not rate
        ):  # no ingest worker (e.g. ingest_json from SQL): the sampled counter
            rate = ui.rate_sampler().recent_rate() or 0.0
        cols[4].metric("Readings/s", f"{rate:,.0f}")
        cols[5].metric("Since last reading", ui.fmt_age(k["secs_since_last"]))


@st.fragment(run_every=ui.LIVE_REFRESH_S)
def sensor_table(location):
    with ui.section("the sensor table"):
        df = q.sensor_table(ui.conn(), location=location, stale_s=stale_s())
        if df.empty:
            st.info("No sensors yet: nothing has been ingested.")
            return
        df["trend"] = df["trend"].apply(lambda v: list(v) if v is not None else [])
        st.dataframe(
            df[
                [
                    "sensor_id",
                    "location",
                    "status",
                    "last_seen",
                    "temperature",
                    "humidity",
                    "trend",
                ]
            ],
            hide_index=True,
            width="stretch",
            height=min(38 + 35 * len(df), 420),
            column_config={
                "sensor_id": st.column_config.TextColumn("Sensor", pinned=True),
                "location": st.column_config.TextColumn("Location"),
                "status": st.column_config.TextColumn("Status"),
                "last_seen": st.column_config.DatetimeColumn(
                    "Last seen", format="HH:mm:ss", help="UTC"
                ),
                "temperature": st.column_config.NumberColumn("°C", format="%.2f"),
                "humidity": st.column_config.NumberColumn("%RH", format="%.1f"),
                "trend": st.column_config.LineChartColumn("Trend °C"),
                "readings_total": st.column_config.NumberColumn(
                    "Readings", format="%d"
                ),
            },
        )
        if len(df) >= 200:
            st.caption(
                "Showing 200 sensors (stale first). Pick a location to narrow the list."
            )


def _bands(rules: pd.DataFrame, y_min: float, y_max: float) -> pd.DataFrame:
    """Breach region of each threshold rule as a band from the threshold to the chart's edge."""
    rows = []
    for _, r in rules.iterrows():
        lo, hi = (
            (r["threshold"], max(y_max, r["threshold"]))
            if r["op"] == ">"
            else (min(y_min, r["threshold"]), r["threshold"])
        )
        rows.append(
            {
                "rule": f"{r['name']} ({r['op']} {r['threshold']:g})",
                "severity": r["severity"],
                "lo": lo,
                "hi": hi,
                "threshold": r["threshold"],
            }
        )
    return pd.DataFrame(rows)


@st.fragment(run_every=ui.LIVE_REFRESH_S)
def live_chart(mode, target, metric, window_s):
    with ui.section("the live chart"):
        c = ui.conn()
        if mode == "Sensor":
            data = q.sensor_series(c, target, window_s=window_s)
            sensor, location = target, None
            if not data.empty:
                loc = q.query_one(
                    c,
                    "SELECT location FROM iotpipe.sensors WHERE sensor_id = %s",
                    (target,),
                )
                location = loc[0] if loc else None
        else:
            data = q.location_series(
                c, target, window_s=window_s, bucket_s=max(1.0, window_s / 120)
            )
            sensor, location = None, target
        if data.empty:
            st.info(f"No readings for {mode.lower()} {ui.md(target)} yet.")
            return
        data["ts"] = pd.to_datetime(data["ts"], utc=True)
        values = data[metric].dropna()
        y_min, y_max = (
            (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        )
        rules = q.chart_rules(c, metric, sensor, location)
        since = data["ts"].min().to_pydatetime()
        alerts = q.chart_alerts(c, since, sensor, location)
        if not rules.empty:
            y_min = min(y_min, float(rules["threshold"].min()))
            y_max = max(y_max, float(rules["threshold"].max()))
        pad = max(1.0, (y_max - y_min) * 0.1)
        y_scale = alt.Scale(
            zero=False, nice=False
        )  # constant spec: Streamlit updates data in place
        unit = "°C" if metric == "temperature" else "%RH"
        color = alt.Color(
            "sensor_id:N",
            legend=alt.Legend(title="Sensor") if mode == "Location" else None,
        )
        line = (
            alt.Chart(data)
            .mark_line(strokeWidth=1.5)
            .encode(
                x=alt.X("ts:T", title="time (UTC)"),
                y=alt.Y(f"{metric}:Q", title=f"{metric} {unit}", scale=y_scale),
                color=color,
                tooltip=["sensor_id", "ts:T", alt.Tooltip(f"{metric}:Q", format=".2f")],
            )
        )
        layers = []
        if not rules.empty:
            bands = _bands(rules, y_min - pad, y_max + pad)
            sev_scale = alt.Scale(
                domain=list(SEVERITY_COLORS), range=list(SEVERITY_COLORS.values())
            )
            layers.append(
                alt.Chart(bands)
                .mark_rect(opacity=0.12, clip=True)
                .encode(
                    y=alt.Y("lo:Q", scale=y_scale),
                    y2="hi:Q",
                    fill=alt.Fill(
                        "severity:N",
                        scale=sev_scale,
                        legend=alt.Legend(title="Rule severity"),
                    ),
                    tooltip=["rule", "severity"],
                )
            )
            layers.append(
                alt.Chart(bands)
                .mark_rule(strokeDash=[4, 3], clip=True)
                .encode(
                    y=alt.Y("threshold:Q", scale=y_scale),
                    color=alt.Color("severity:N", scale=sev_scale, legend=None),
                    tooltip=["rule"],
                )
            )
        layers.append(line)
        if not alerts.empty:
            alerts["started_at"] = pd.to_datetime(alerts["started_at"], utc=True)
            alerts = alerts[(alerts["metric"] == metric) & alerts["y"].notna()]
        if not alerts.empty:
            sev_scale = alt.Scale(
                domain=list(SEVERITY_COLORS), range=list(SEVERITY_COLORS.values())
            )
            layers.append(
                alt.Chart(alerts)
                .mark_point(shape="triangle-up", size=120, filled=True)
                .encode(
                    x="started_at:T",
                    y=alt.Y("y:Q", scale=y_scale),
                    color=alt.Color("severity:N", scale=sev_scale, legend=None),
                    tooltip=[
                        "alert_id",
                        "rule",
                        "sensor_id",
                        "severity",
                        "state",
                        "value",
                        "started_at:T",
                    ],
                )
            )
        st.altair_chart(
            alt.layer(*layers)
            .resolve_scale(color="independent", fill="independent")
            .properties(height=320),
            width="stretch",
        )
        st.caption(
            f"{len(data)} points over the last {window_s:g} s of event time; "
            f"{len(rules)} threshold rule(s) drawn as bands, {len(alerts)} alert(s) marked ▲."
        )


def _toast_new(alerts):
    """A toast for every critical firing alert not toasted yet (NOTIFY payloads or rows)."""
    toasted = st.session_state.setdefault("_toasted", set())
    for a in alerts:
        aid = a.get("alert_id")
        if (
            a.get("severity") != "critical"
            or a.get("state", "firing") != "firing"
            or aid in toasted
        ):
            continue
        toasted.add(aid)
        rule = a.get("rule") or f"rule {a.get('rule_id')}"
        reading = a.get("reading")
        shown = (
            reading if reading is not None and not pd.isna(reading) else a.get("value")
        )
        try:
            shown = f"{a.get('metric') or 'value'} {float(shown):.2f}"
        except (TypeError, ValueError):
            shown = ""
        st.toast(
            f"Critical alert #{aid}: {ui.md(rule)} on {ui.md(a.get('sensor_id'))}"
            + (f" ({ui.md(shown)})" if shown else ""),
            icon=":material/warning:",
        )


def _alert_value(row) -> str:
    """' · temperature = 48.2' / ' · z = 7.1 (temperature 35.0)' / ' · silent 31 s', by rule kind."""
    metric = row.metric if isinstance(row.metric, str) else ""
    v = None if pd.isna(row.value) else float(row.value)
    reading = None if pd.isna(row.reading) else float(row.reading)
    if row.kind == "offline":
        return f" · silent {v:.0f} s" if v is not None else " · offline"
    if row.kind == "anomaly":
        out = (
            f" · {ui.md(metric)} z = {v:.1f}"
            if v is not None
            else f" · {ui.md(metric)}"
        )
        return out + (f" ({reading:.2f})" if reading is not None else "")
    if row.kind == "rate":
        out = (
            f" · {ui.md(metric)} {v:+.2f}/min"
            if v is not None
            else f" · {ui.md(metric)}"
        )
        return out + (f" ({reading:.2f})" if reading is not None else "")
    shown = reading if reading is not None else v
    return (
        f" · {ui.md(metric)} = {shown:.2f}"
        if shown is not None
        else (f" · {ui.md(metric)}" if metric else "")
    )


def _ack(alert_id: int):
    """Button callback: acknowledge through iotpipe.ack_alert(), then refresh the feed."""
    ss = st.session_state
    try:
        q.ack_alert(ui.conn(), alert_id, (ss.get("ack_as") or "").strip() or None)
        ss["_ack_msg"] = (f"Alert #{alert_id} acknowledged", None)
    except Exception as e:  # noqa: BLE001 - shown in the feed
        ss["_ack_msg"] = (
            None,
            db.describe_error(e, f"acknowledging alert #{alert_id}"),
        )
    ss["_feed_dirty"] = True


def _delivery_note(row, delivered: dict) -> str:
    """Whether and where the alert was delivered (iotpipe.notifications)."""
    where = delivered.get(int(row.alert_id))
    if where:
        return f"delivery: {ui.md(where)}"
    if getattr(row, "silenced", False) is True:
        return "silenced: not sent"
    return "not routed to any receiver"


@st.fragment(run_every=ui.FEED_REFRESH_S)
def alert_feed():
    with ui.section("the alert feed"):
        c = ui.conn()
        listener = ui.alert_listener()
        notes = listener.drain() if listener else []
        ss = st.session_state
        first = "_feed_max_id" not in ss
        if first:
            ss["_feed_max_id"] = q.max_alert_id(c)
            ss["_feed_at"] = 0.0
        now = dt.datetime.now().timestamp()
        listening = bool(listener and listener.connected)
        if notes:
            # only alerts that exist, with their stored fields (NOTIFY can be forged)
            known = q.alerts_by_id(c, notes)
            if not known.empty:
                _toast_new(known.to_dict("records"))
        # Without a live LISTEN connection, fall back to polling for new alerts.
        if not listening:
            new = q.alerts_after(c, ss["_feed_max_id"])
            if not new.empty:
                ss["_feed_max_id"] = int(new["alert_id"].max())
                _toast_new(new.to_dict("records"))
                notes = notes or [{}]
        if (
            notes
            or ss.get("_feed_dirty")
            or now - ss["_feed_at"] >= ui.FEED_POLL_S
            or "_feed_df" not in ss
        ):
            ss["_feed_df"] = q.alert_feed(c, limit=30)
            ss["_feed_at"] = now
            ss["_feed_dirty"] = False
            fresh = ss["_feed_df"]
            if not fresh.empty:
                # alerts that fired while LISTEN was (re)connecting still get their toast
                newer = fresh[fresh["alert_id"] > ss["_feed_max_id"]]
                if not newer.empty:
                    _toast_new(newer.to_dict("records"))
                ss["_feed_max_id"] = max(
                    ss["_feed_max_id"], int(fresh["alert_id"].max())
                )
        df = ss["_feed_df"]
        ok, err = ss.pop("_ack_msg", (None, None))
        if ok:
            st.toast(ok, icon=":material/check:")
        if err:
            st.warning(ui.md(err))
        if listening:
            st.caption(
                f":green[●] live: LISTEN iotpipe_alerts ({listener.received} notifications received)"
            )
        else:
            err = listener.error if listener else "no listener"
            st.caption(
                f":orange[●] polling every {ui.FEED_REFRESH_S} s (LISTEN not connected: {ui.md(err)})"
            )
        if df.empty:
            st.info("No alerts yet.")
            return
        box = st.container(height=460) if len(df) > 6 else st.container()
        delivered = q.deliveries_of(c, [int(a) for a in df["alert_id"]])
        for row in df.itertuples():
            cols = box.columns([3.4, 1.6], vertical_alignment="center")
            when = pd.Timestamp(row.started_at).strftime("%H:%M:%S")
            state = (
                "**FIRING**"
                if row.state == "firing"
                else f"resolved {pd.Timestamp(row.resolved_at):%H:%M:%S}"
            )
            what = _alert_value(row)
            rule = row.rule if isinstance(row.rule, str) else f"rule {row.rule_id}"
            acked = (
                f" · acked by {ui.md(row.acked_by)} at {pd.Timestamp(row.acked_at):%H:%M:%S}"
                if not pd.isna(row.acked_at)
                else ""
            )
            cols[0].markdown(
                f"{SEVERITY_BADGES.get(row.severity, ui.md(row.severity))} #{row.alert_id} · **{ui.md(rule)}** · {ui.md(row.sensor_id)}"
                f"{what}"
                f" · {state} since {when}{acked}"
                f" · {_delivery_note(row, delivered)}"
            )
            if pd.isna(row.acked_at):
                cols[1].button(
                    f"Ack #{row.alert_id}",
                    key=f"ack-{row.alert_id}",
                    on_click=_ack,
                    args=(int(row.alert_id),),
                )


kpi_tiles()

try:
    locs = q.locations(c)
except Exception:  # noqa: BLE001 - the sections below say what is wrong
    locs = []

left, right = st.columns([3, 2])
with left:
    st.subheader("Sensors")
    location = st.selectbox("Location", ["All locations"] + locs, key="ops_location")
    location = None if location == "All locations" else location
    sensor_table(location)
with right:
    st.subheader("Alert feed")
    alert_feed()

st.subheader("Live chart")
cc = st.columns([1, 2, 1, 1])
mode = cc[0].radio(
    "Chart by", ["Sensor", "Location"], horizontal=True, key="chart_mode"
)
if mode == "Sensor":
    try:
        options = q.sensor_ids(c, location)
    except Exception:  # noqa: BLE001
        options = []
else:
    options = [location] if location else locs
target = cc[1].selectbox(mode, options, key=f"chart_target_{mode}") if options else None
metric = cc[2].radio(
    "Metric", ["temperature", "humidity"], horizontal=True, key="chart_metric"
)
window_s = cc[3].selectbox(
    "Window",
    [60, 300, 900],
    index=1,
    format_func=lambda s: f"{s // 60} min",
    key="chart_window",
)
if target:
    live_chart(mode, target, metric, float(window_s))
else:
    st.info("No sensors to chart yet.")
