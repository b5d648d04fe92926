"""Analytics: history from the warehouse (iotpipe_dw) — trends, heatmap, anomalies, completeness."""

import datetime as dt

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import db
from dashboard import queries as q
from dashboard import report, ui

st.title("Analytics")
c = ui.page_guard()


@st.cache_data(ttl=30, show_spinner=False)
def load(d_from, d_to, locations):
    c = ui.conn()
    return q.dw_hourly(c, d_from, d_to, list(locations)), q.dw_completeness(
        c, d_from, d_to, list(locations)
    )


def pdf_report(url, t_from, t_to):
    """Deferred download: the PDF is built when the button is clicked, on its own connection."""

    def build() -> bytes:
        with db.connect(url) as conn:
            return report.make_report(conn, t_from, t_to)

    return build


with ui.section("the warehouse"):
    lo, hi = q.dw_bounds(c)
    if hi is None:
        st.info(
            "The warehouse is empty: run `SELECT iotpipe.run_etl();` (or wait for the scheduled ETL)."
        )
        st.stop()
    last_day = pd.Timestamp(hi).date()
    first_day = max(pd.Timestamp(lo).date(), last_day - dt.timedelta(days=6))
    f1, f2 = st.columns([1, 2])
    rng = f1.date_input(
        "Date range (UTC)",
        value=(first_day, last_day),
        min_value=pd.Timestamp(lo).date(),
        max_value=last_day + dt.timedelta(days=1),
        key="an_range",
    )
    d_from, d_to = (
        (rng[0], rng[1])
        if isinstance(rng, (tuple, list)) and len(rng) == 2
        else (rng[0], rng[0])
    )
    all_locs = q.dw_locations(c)
    locs = f2.multiselect(
        "Locations", all_locs, key="an_locs", placeholder="All locations"
    )
    hourly, comp = load(d_from, d_to, tuple(locs))

    if hourly.empty:
        st.info(f"No warehouse data between {d_from} and {d_to}.")
        st.stop()

    hourly["hour_start"] = pd.to_datetime(hourly["hour_start"], utc=True)
    daily = q.daily_from_hourly(hourly)
    readings = int(hourly["readings"].sum())
    exp = comp["hours_expected"].sum() if not comp.empty else 0
    k = st.columns(4)
    k[0].metric("Readings", f"{readings:,}")
    k[1].metric("Sensors", f"{int(comp['sensors'].sum()) if not comp.empty else 0:,}")
    k[2].metric("Anomalies", f"{int(hourly['anomalies'].sum()):,}")
    k[3].metric(
        "Completeness",
        f"{100.0 * comp['hours_present'].sum() / exp:.1f} %" if exp else "—",
    )

    tab_trend, tab_heat, tab_anom, tab_comp = st.tabs(
        ["Trends", "Heatmap", "Anomalies", "Completeness"]
    )
    with tab_trend:
        grain = st.radio("Grain", ["Hourly", "Daily"], horizontal=True, key="an_grain")
        metric = st.radio(
            "Metric",
            ["temperature_avg", "humidity_avg"],
            horizontal=True,
            key="an_metric",
            format_func=lambda m: "temperature °C"
            if m.startswith("t")
            else "humidity %RH",
        )
        frame, x = (hourly, "hour_start") if grain == "Hourly" else (daily, "day")
        st.altair_chart(
            alt.Chart(frame)
            .mark_line(point=alt.OverlayMarkDef(size=25 if grain == "Hourly" else 50))
            .encode(
                x=alt.X(f"{x}:T", title="time (UTC)"),
                y=alt.Y(f"{metric}:Q", title=metric.replace("_", " ")),
                color=alt.Color(
                    "location:N", legend=alt.Legend(orient="bottom", columns=4)
                ),
                tooltip=[
                    "location",
                    f"{x}:T",
                    alt.Tooltip(f"{metric}:Q", format=".2f"),
                    "readings",
                ],
            )
            .properties(height=340),
            width="stretch",
        )
    with tab_heat:
        heat = q.heatmap_from_hourly(hourly)
        st.altair_chart(
            alt.Chart(heat)
            .mark_rect()
            .encode(
                x=alt.X("hour:O", title="hour of day (UTC)"),
                y=alt.Y("location:N", title=None),
                color=alt.Color(
                    "temperature_avg:Q",
                    title="avg °C",
                    scale=alt.Scale(scheme="redyellowblue", reverse=True),
                ),
                tooltip=[
                    "location",
                    "hour",
                    alt.Tooltip("temperature_avg:Q", format=".2f"),
                    "readings",
                ],
            )
            .properties(height=40 + 28 * heat["location"].nunique()),
            width="stretch",
        )
    with tab_anom:
        st.altair_chart(
            alt.Chart(daily)
            .mark_bar()
            .encode(
                x=alt.X("day:T", title="day (UTC)"),
                y=alt.Y("anomalies:Q", title="anomalous readings"),
                color=alt.Color(
                    "location:N", legend=alt.Legend(orient="bottom", columns=4)
                ),
                tooltip=["location", "day:T", "anomalies", "readings"],
            )
            .properties(height=300),
            width="stretch",
        )
    with tab_comp:
        st.caption(
            "Sensor-hours with data divided by the sensor-hours between each sensor's first and last "
            "hour in the range."
        )
        shown = comp.assign(completeness=(100 * comp["completeness"]).round(1))
        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            column_config={
                "completeness": st.column_config.ProgressColumn(
                    "completeness %", min_value=0, max_value=100, format="%.1f"
                )
            },
        )

    d1, d2 = st.columns(2)
    d1.download_button(
        "Download CSV (hourly per location)",
        hourly.to_csv(index=False).encode(),
        file_name=f"iotpipe_hourly_{d_from}_{d_to}.csv",
        mime="text/csv",
    )
    t_from = dt.datetime.combine(d_from, dt.time(0), tzinfo=dt.timezone.utc)
    t_to = dt.datetime.combine(d_to, dt.time(0), tzinfo=dt.timezone.utc) + dt.timedelta(
        days=1
    )
    d2.download_button(
        "Download report (PDF)",
        pdf_report(ui.get_url(), t_from, t_to),
        file_name=f"iotpipe_report_{d_from}_{d_to}.pdf",
        mime="application/pdf",
    )
