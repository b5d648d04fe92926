"""PDF summary of a period: key figures, charts per location, top alerts, data quality.

    python -m dashboard.report --from 2026-11-20 --to 2026-11-27 -o report.pdf [--url postgresql://...]

--from/--to take a date (UTC day; --to includes that whole day) or an ISO timestamp (used as
given, half-open). The URL defaults to $IOTPIPE_DASHBOARD_URL. History comes from the
warehouse (iotpipe_dw), alerts and dead letters from iotpipe; a part that is not available
yet is reported as such in the PDF instead of failing it.
"""

from __future__ import annotations

import argparse
from xml.sax.saxutils import escape as xml_escape
import datetime as dt
import io
import os
import sys

import numpy as np
import pandas as pd
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from dashboard import db
from dashboard import queries as q

SECTIONS = ("Key figures", "Charts per location", "Top alerts", "Data quality")


def parse_bound(text: str, end: bool = False) -> dt.datetime:
    """A date means a whole UTC day (the end bound includes it); a timestamp is used as given."""
    text = text.strip()
    try:
        d = dt.date.fromisoformat(text)
        t = dt.datetime.combine(d, dt.time(0), tzinfo=dt.timezone.utc)
        return t + dt.timedelta(days=1) if end else t
    except ValueError:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _try(data: dict, key: str, fn, *args):
    try:
        data[key] = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the PDF
        if db.classify_error(e) == db.UNREACHABLE:
            raise
        data[key] = e


def gather(conn, t_from: dt.datetime, t_to: dt.datetime) -> dict:
    """Everything the report shows; a failed part holds its exception."""
    data: dict = {"t_from": t_from, "t_to": t_to}
    _try(data, "hourly", q.dw_hourly, conn, t_from, t_to)
    _try(data, "completeness", q.dw_completeness, conn, t_from, t_to)
    _try(data, "alerts", q.alerts_in_period, conn, t_from, t_to)
    _try(data, "top_alerts", q.top_alerts, conn, t_from, t_to, 10)
    _try(data, "dead_letters", q.dead_letters_in_period, conn, t_from, t_to, 10)
    _try(data, "dead_letters_total", q.dead_letters_total_in_period, conn, t_from, t_to)
    return data


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, (pd.Timedelta, dt.timedelta)):
        secs = pd.Timedelta(v).total_seconds()
        return f"{secs / 3600:.1f} h" if secs >= 3600 else f"{secs / 60:.1f} min"
    if isinstance(v, (dt.datetime, pd.Timestamp)):
        return f"{v:%Y-%m-%d %H:%M}"
    if isinstance(v, str):
        return v
    try:
        if pd.isna(v):
            return "-"
    except (TypeError, ValueError):
        pass
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):,.{digits}f}"
    return str(v)


def _table(df: pd.DataFrame, cols: list[str], headers: list[str], widths=None) -> Table:
    rows = [headers] + [[_fmt(r[c]) for c in cols] for _, r in df.iterrows()]
    t = Table(rows, colWidths=widths, repeatRows=1)
    t.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef7")),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b8c4")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return t


def _location_chart(loc: str, h: pd.DataFrame, t_from, t_to) -> Drawing:
    """Hourly average, min and max temperature of one location."""
    w, ht = 170 * mm, 52 * mm
    d = Drawing(w, ht)
    d.add(
        String(
            0,
            ht - 10,
            f"{loc}: temperature per hour (°C; avg, min, max)",
            fontName="Helvetica-Bold",
            fontSize=9,
        )
    )
    h = h.sort_values("hour_start")
    x0 = pd.Timestamp(t_from).timestamp()
    xs = [(pd.Timestamp(t).timestamp() - x0) / 3600.0 for t in h["hour_start"]]
    series = []
    for col in ("temperature_avg", "temperature_min", "temperature_max"):
        pts = [
            (x, float(v))
            for x, v in zip(xs, h[col])
            if v is not None and not pd.isna(v)
        ]
        series.append(pts or [(0.0, 0.0)])
    lp = LinePlot()
    lp.x, lp.y, lp.width, lp.height = 30, 18, w - 40, ht - 38
    lp.data = series
    lp.lines[0].strokeColor = colors.HexColor("#1f6feb")
    lp.lines[0].strokeWidth = 1.4
    lp.lines[1].strokeColor = colors.HexColor("#8fb8f0")
    lp.lines[2].strokeColor = colors.HexColor("#d1242f")
    # markers: an hour with data shows even when its neighbours have none
    for i, col in enumerate(("#1f6feb", "#8fb8f0", "#d1242f")):
        lp.lines[i].symbol = makeMarker("FilledCircle")
        lp.lines[i].symbol.size = 2.5 if len(xs) > 48 else 4
        lp.lines[i].symbol.fillColor = colors.HexColor(col)
        lp.lines[i].symbol.strokeColor = colors.HexColor(col)
    lp.xValueAxis.valueMin = 0
    lp.xValueAxis.valueMax = max(1.0, (pd.Timestamp(t_to).timestamp() - x0) / 3600.0)
    lp.xValueAxis.labels.fontSize = 7
    lp.yValueAxis.labels.fontSize = 7
    lp.xValueAxis.labelTextFormat = lambda v: (
        pd.Timestamp(x0 + v * 3600, unit="s", tz="UTC").strftime("%m-%d %H:00")
    )
    d.add(lp)
    return d


def build_pdf(data: dict) -> bytes:
    t_from, t_to = data["t_from"], data["t_to"]
    styles = getSampleStyleSheet()
    h1, h2, body = styles["Title"], styles["Heading2"], styles["BodyText"]
    small = styles["BodyText"].clone(
        "small", fontSize=8, leading=10, textColor=colors.HexColor("#57606a")
    )
    story = [
        Paragraph("iotpipe report", h1),
        Paragraph(
            f"Period: {t_from:%Y-%m-%d %H:%M} to {t_to:%Y-%m-%d %H:%M} UTC", body
        ),
        Paragraph(
            f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC", small
        ),
        Spacer(1, 4 * mm),
    ]

    def unavailable(what, err):
        # Paragraph parses its text as markup: an error text is data
        story.append(Paragraph(xml_escape(db.describe_error(err, what)), body))

    hourly = data.get("hourly")
    comp = data.get("completeness")
    alerts = data.get("alerts")

    # Key figures
    story.append(Paragraph("Key figures", h2))
    figures = []
    if isinstance(hourly, pd.DataFrame):
        readings = int(hourly["readings"].sum()) if not hourly.empty else 0
        figures += [
            ("Readings (deduplicated, warehouse)", f"{readings:,}"),
            ("Locations", f"{hourly['location'].nunique() if not hourly.empty else 0}"),
            (
                "Anomalous readings",
                f"{int(hourly['anomalies'].sum()) if not hourly.empty else 0:,}",
            ),
        ]
        if not hourly.empty:
            w = hourly.dropna(subset=["temperature_avg"])
            if not w.empty and w["temperature_n"].sum() > 0:
                avg = (w["temperature_avg"] * w["temperature_n"]).sum() / w[
                    "temperature_n"
                ].sum()
                figures.append(("Average temperature", f"{avg:.2f} °C"))
                figures.append(
                    (
                        "Temperature range",
                        f"{hourly['temperature_min'].min():.2f} to "
                        f"{hourly['temperature_max'].max():.2f} °C",
                    )
                )
    else:
        figures.append(("Warehouse", "not available"))
    if isinstance(comp, pd.DataFrame) and not comp.empty:
        figures.append(("Sensors reporting", f"{int(comp['sensors'].sum()):,}"))
        exp = comp["hours_expected"].sum()
        figures.append(
            (
                "Data completeness (sensor-hours)",
                f"{100.0 * comp['hours_present'].sum() / exp:.1f} %" if exp else "-",
            )
        )
    if isinstance(alerts, dict):
        figures += [
            ("Alerts fired", f"{int(alerts['fired']):,}"),
            (
                "  critical / warning",
                f"{int(alerts['critical']):,} / {int(alerts['warning']):,}",
            ),
            ("  acknowledged", f"{int(alerts['acknowledged']):,}"),
        ]
    else:
        figures.append(("Alerts", "not available"))
    dl = data.get("dead_letters")
    if isinstance(dl, pd.DataFrame):
        figures.append(
            (
                "Rejected messages (dead letters)",
                f"{data['dead_letters_total']:,}"
                if isinstance(data.get("dead_letters_total"), int)
                else f"{int(dl['messages'].sum()) if not dl.empty else 0:,}",
            )
        )
    story.append(
        _table(
            pd.DataFrame(figures, columns=["k", "v"]),
            ["k", "v"],
            ["Figure", "Value"],
            [80 * mm, 80 * mm],
        )
    )
    story.append(Spacer(1, 4 * mm))

    # Charts per location
    story.append(Paragraph("Charts per location", h2))
    if isinstance(hourly, pd.DataFrame):
        if hourly.empty:
            story.append(
                Paragraph(
                    "No warehouse data in this period (has iotpipe.run_etl() run?).",
                    body,
                )
            )
        for loc, h in hourly.groupby("location"):
            story.append(_location_chart(str(loc), h, t_from, t_to))
            story.append(Spacer(1, 2 * mm))
    else:
        unavailable("the warehouse", hourly)

    # Top alerts
    story.append(Paragraph("Top alerts", h2))
    top = data.get("top_alerts")
    if isinstance(top, pd.DataFrame):
        if top.empty:
            story.append(Paragraph("No alerts fired in this period.", body))
        else:
            story.append(
                _table(
                    top,
                    [
                        "rule",
                        "sensor_id",
                        "severity",
                        "fired",
                        "max_value",
                        "firing_time",
                    ],
                    ["Rule", "Sensor", "Severity", "Fired", "Max value", "Time firing"],
                )
            )
    else:
        unavailable("alerts", top)
    story.append(Spacer(1, 4 * mm))

    # Data quality
    story.append(Paragraph("Data quality", h2))
    if isinstance(comp, pd.DataFrame):
        if not comp.empty:
            c2 = comp.copy()
            c2["completeness"] = (100 * c2["completeness"]).map(lambda v: f"{v:.1f} %")
            if isinstance(hourly, pd.DataFrame) and not hourly.empty:
                an = hourly.groupby("location", as_index=False).agg(
                    anomalies=("anomalies", "sum"), readings=("readings", "sum")
                )
                c2 = c2.merge(an, on="location", how="left")
            else:
                c2["anomalies"], c2["readings"] = 0, 0
            story.append(
                Paragraph(
                    "Completeness (sensor-hours with data / sensor-hours between each sensor's "
                    "first and last hour in the period) and anomalies per location:",
                    small,
                )
            )
            story.append(
                _table(
                    c2,
                    [
                        "location",
                        "sensors",
                        "readings",
                        "hours_present",
                        "hours_expected",
                        "completeness",
                        "anomalies",
                    ],
                    [
                        "Location",
                        "Sensors",
                        "Readings",
                        "Hours with data",
                        "Hours expected",
                        "Completeness",
                        "Anomalies",
                    ],
                )
            )
        else:
            story.append(Paragraph("No warehouse data in this period.", body))
    else:
        unavailable("data completeness", comp)
    story.append(Spacer(1, 3 * mm))
    if isinstance(dl, pd.DataFrame):
        if dl.empty:
            story.append(Paragraph("No rejected messages in this period.", body))
        else:
            story.append(
                Paragraph("Rejected messages by reason (the 10 most frequent):", small)
            )
            story.append(
                _table(
                    dl,
                    ["reason", "messages"],
                    ["Reason", "Messages"],
                    [130 * mm, 30 * mm],
                )
            )
    else:
        unavailable("dead letters", dl)

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title="iotpipe report",
        subject=f"{t_from:%Y-%m-%d} to {t_to:%Y-%m-%d}",
    )
    doc.build(story)
    return buf.getvalue()


def make_report(conn, t_from: dt.datetime, t_to: dt.datetime) -> bytes:
    return build_pdf(gather(conn, t_from, t_to))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dashboard.report", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--from",
        dest="t_from",
        required=True,
        help="start: YYYY-MM-DD (UTC) or ISO timestamp",
    )
    ap.add_argument(
        "--to",
        dest="t_to",
        required=True,
        help="end: YYYY-MM-DD (inclusive day) or ISO timestamp",
    )
    ap.add_argument("-o", "--output", required=True, help="PDF file to write")
    ap.add_argument(
        "--url",
        default=os.environ.get("IOTPIPE_DASHBOARD_URL"),
        help="PostgreSQL URL (default: $IOTPIPE_DASHBOARD_URL)",
    )
    a = ap.parse_args(argv)
    try:
        t_from, t_to = parse_bound(a.t_from), parse_bound(a.t_to, end=True)
    except ValueError as e:
        ap.error(f"bad --from/--to: {e}")
    if t_to <= t_from:
        ap.error("--to must be after --from")
    if not a.url:
        ap.error("no database URL: pass --url or set IOTPIPE_DASHBOARD_URL")
    try:
        with db.connect(a.url) as conn:
            if db.extension_version(conn) is None:
                print(
                    "error: the iotpipe extension is not installed in this database",
                    file=sys.stderr,
                )
                return 2
            pdf = make_report(conn, t_from, t_to)
    except Exception as e:  # noqa: BLE001
        if db.classify_error(e) == db.UNREACHABLE:
            print(f"error: {db.describe_error(e, 'the database')}", file=sys.stderr)
            return 2
        raise
    with open(a.output, "wb") as f:
        f.write(pdf)
    print(
        f"wrote {a.output} ({len(pdf):,} bytes, {t_from:%Y-%m-%d %H:%M} to {t_to:%Y-%m-%d %H:%M} UTC)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
