"""System: workers, ingest rate over time, alert delivery, Kafka lag, ETL runs, dead letters with reasons."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries as q
from dashboard import ui

st.title("System")
c = ui.page_guard()


@st.fragment(run_every=ui.LIVE_REFRESH_S)
def live_health():
    with ui.section("the worker status"):
        c = ui.conn()
        w = q.workers(c)
        k = q.kpis(c, float(st.session_state.get("stale_s") or 30))
        total = q.total_readings(c)
        ui.rate_sampler().add(total, k["readings_per_s"])
        running = int((w["state"] == "running").sum()) if not w.empty else 0
        errors = (
            int(w["last_error"].fillna("").astype(bool).sum()) if not w.empty else 0
        )
        cols = st.columns(4)
        cols[0].metric("Workers running", f"{running} / {len(w)}")
        cols[1].metric("Readings/s", f"{k['readings_per_s']:,.0f}")
        cols[2].metric("Readings ingested", f"{total:,}")
        cols[3].metric("Workers with errors", errors)
        st.subheader("Workers")
        st.dataframe(
            w,
            hide_index=True,
            width="stretch",
            column_config={
                "rate": st.column_config.NumberColumn("rate (msg/s)", format="%.1f")
            },
        )

    with ui.section("the ingest rate"):
        st.subheader("Ingest rate")
        s = ui.rate_sampler().series()
        if len(s) < 2:
            st.caption("Collecting samples (every refresh of this dashboard adds one)…")
        else:
            df = pd.DataFrame(
                s, columns=["t", "readings/s (sensors counter)", "readings/s (workers)"]
            )
            df["t"] = pd.to_datetime(df["t"], unit="s", utc=True)
            long = df.melt("t", var_name="measure", value_name="rate")
            st.altair_chart(
                alt.Chart(long)
                .mark_line()
                .encode(
                    x=alt.X(
                        "t:T", title="time (UTC)", axis=alt.Axis(format="%H:%M:%S")
                    ),
                    y=alt.Y("rate:Q", title="readings/s"),
                    color=alt.Color(
                        "measure:N", legend=alt.Legend(orient="bottom", title=None)
                    ),
                )
                .properties(height=220),
                width="stretch",
            )
            st.caption(
                "Sampled by this dashboard process from iotpipe.sensors.readings_total and iotpipe.status."
            )


live_health()

with ui.section("the hourly ingest history (warehouse)"):
    h = q.dw_readings_per_hour(c, 48)
    if h.empty:
        st.caption(
            "Warehouse: no hourly data for the last 48 h yet (run iotpipe.run_etl())."
        )
    else:
        st.caption("Readings per hour over the last 48 h (warehouse)")
        st.bar_chart(h, x="hour_start", y="readings", height=180)

st.subheader("Alert delivery")
with ui.section("alert delivery"):
    rcv = q.receivers(c)
    box = q.outbox(c)
    cols = st.columns(4)
    cols[0].metric(
        "Receivers", f"{int(rcv['enabled'].sum()) if not rcv.empty else 0} enabled"
    )
    cols[1].metric("Outbox pending", f"{box['pending']:,}")
    cols[2].metric("Notifications sent", f"{box['sent']:,}")
    cols[3].metric("Notifications failed", f"{box['failed']:,}")
    if rcv.empty:
        st.info(
            "No receivers configured (INSERT INTO iotpipe.receivers … and iotpipe.routes; see docs/alerts.md)."
        )
    else:
        st.dataframe(rcv, hide_index=True, width="stretch")
        st.caption(
            "From iotpipe.receiver_overview (URLs, headers and passwords are not shown)."
        )
    fails = q.delivery_failures(c, 20)
    if not fails.empty:
        st.caption("Last delivery failures, with their reasons")
        st.dataframe(fails, hide_index=True, width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("Kafka lag per partition")
    with ui.section("Kafka lag"):
        lag = q.kafka_lag(c)
        if lag.empty:
            st.info(
                "No Kafka partitions consumed yet (declare a source with iotpipe.kafka_start())."
            )
        else:
            if "lag" in lag.columns and lag["lag"].notna().any():
                total_lag = int(lag["lag"].fillna(0).sum())
                st.metric("Total lag (messages)", f"{total_lag:,}")
                if total_lag:
                    bars = lag.assign(
                        tp=lag["topic"] + "[" + lag["partition"].astype(str) + "]"
                    )
                    st.bar_chart(
                        bars,
                        x="tp",
                        y="lag",
                        height=40 + 24 * len(bars),
                        x_label="topic[partition]",
                        y_label="messages behind",
                        horizontal=True,
                    )
            st.dataframe(lag, hide_index=True, width="stretch")
            st.caption("From iotpipe.kafka_lag.")
with right:
    st.subheader("ETL runs")
    with ui.section("the ETL runs"):
        runs = q.etl_runs(c, 20)
        if runs.empty:
            st.info("No ETL run yet (iotpipe.run_etl()).")
        else:
            st.dataframe(runs, hide_index=True, width="stretch")

st.subheader("Dead letters")
with ui.section("the dead letters"):
    reasons = q.dead_letter_reasons(c, 24)
    if reasons.empty:
        st.info("No dead letters in the last 24 h.")
    else:
        st.caption("Rejected messages by reason, last 24 h")
        st.dataframe(reasons, hide_index=True, width="stretch")
    recent = q.dead_letters_recent(c, 50)
    if not recent.empty:
        with st.expander(
            f"Latest {len(recent)} dead letters (payload prefix, raw bytes escaped)"
        ):
            st.dataframe(recent, hide_index=True, width="stretch")
