"""Streamlit glue shared by the pages: configuration, one connection per session,
error messages instead of tracebacks, the LISTEN thread of the alert feed, and the
process-wide ingest-rate sampler."""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import threading
import time
from contextlib import contextmanager

import psycopg
import streamlit as st

from dashboard import db

URL_ENV = "IOTPIPE_DASHBOARD_URL"
LIVE_REFRESH_S = 2
FEED_REFRESH_S = 1
FEED_POLL_S = (
    10  # the feed re-reads iotpipe.alerts at least this often without notifications
)


def get_url() -> str | None:
    """The connection URL: $IOTPIPE_DASHBOARD_URL, else [connections.iotpipe] url in secrets.toml."""
    url = os.environ.get(URL_ENV)
    if url:
        return url
    try:
        sec = st.secrets
        if "connections" in sec and "iotpipe" in sec["connections"]:
            return sec["connections"]["iotpipe"].get("url")
        if "iotpipe" in sec:
            return sec["iotpipe"].get("url")
    except Exception:  # no secrets file
        return None
    return None


def _open() -> psycopg.Connection:
    return db.connect(get_url())


def conn() -> psycopg.Connection:
    """This session's connection, reopened when it was lost."""
    c = st.session_state.get("_iotpipe_conn")
    if c is not None and (c.closed or c.broken):
        c = None
    if c is None:
        c = _open()
        st.session_state["_iotpipe_conn"] = c
    return c


def drop_conn():
    c = st.session_state.pop("_iotpipe_conn", None)
    if c is not None:
        try:
            c.close()
        except Exception:
            pass


# What CommonMark or Streamlit's Markdown gives a meaning to inside a line: links and
# images ([ ] ( ) !), emphasis and code (* _ ` ~), HTML and entities (< > &), tables (|),
# colour and icon directives (:red[...], :material/...:), LaTeX ($), braces.  Data never
# starts a line here (line breaks are folded), so - + . # need no escape.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()!|<>~:$&])")


def md(value) -> str:
    """Text that comes from data (sensor ids, locations, rule names, error messages),
    shown inside Markdown as itself: every special character backslash-escaped (any ASCII
    punctuation may be escaped in CommonMark), line breaks folded to spaces."""
    s = "" if value is None else str(value)
    s = s.replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", s)


def page_guard() -> psycopg.Connection:
    """Connect and check the extension; on failure say so on the page and stop it."""
    url = get_url()
    if not url:
        st.error(
            "No database configured. Set IOTPIPE_DASHBOARD_URL or add [connections.iotpipe] url "
            "to .streamlit/secrets.toml."
        )
        st.stop()
    try:
        c = conn()
        version = db.extension_version(c)
    except Exception as e:  # unreachable, auth failure, ...
        drop_conn()
        st.error(
            f"**Database unreachable.** {md(db.describe_error(e, 'the database'))}\n\nURL: {md(db.mask_url(url))}"
        )
        st.stop()
    if version is None:
        st.error(
            "**The iotpipe extension is not installed** in this database. Run `CREATE EXTENSION iotpipe;` "
            "(with `shared_preload_libraries = 'iotpipe'`) and reload this page."
        )
        st.stop()
    pending = db.pending_update(c)
    if pending:
        st.error(
            f"**iotpipe {pending[0]} is installed, but the server runs the {pending[1]} library.** "
            "The workers wait until an administrator runs `ALTER EXTENSION iotpipe UPDATE;`."
        )
        st.stop()
    return c


@contextmanager
def section(what: str):
    """Render a readable message instead of a traceback when a section's query fails."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every failure becomes a message
        kind = db.classify_error(e)
        if kind == db.UNREACHABLE:
            drop_conn()
            st.error(md(db.describe_error(e, what)))
        elif kind == db.NOT_AVAILABLE:
            st.info(md(db.describe_error(e, what)))
        else:
            st.warning(md(db.describe_error(e, what)))


# ---------------------------------------------------------------------------
# LISTEN iotpipe_alerts: one background thread per browser session
# ---------------------------------------------------------------------------


class AlertListener(threading.Thread):
    """Holds its own connection, LISTENs on iotpipe_alerts and queues the JSON payloads.

    It stops by itself when nobody drained its queue for IDLE_S seconds (the browser
    session went away), and reconnects after errors."""

    IDLE_S = 30

    def __init__(self, url: str):
        super().__init__(daemon=True, name="iotpipe-alert-listener")
        self.url = url
        self.queue: queue.Queue = queue.Queue(maxsize=10000)
        self.connected = False
        self.error: str | None = None
        self.last_drain = time.monotonic()
        self.stop_event = threading.Event()
        self.received = 0

    def run(self):
        while (
            not self.stop_event.is_set()
            and time.monotonic() - self.last_drain < self.IDLE_S
        ):
            try:
                with db.connect(self.url) as c:
                    c.execute("LISTEN iotpipe_alerts")
                    self.connected, self.error = True, None
                    while (
                        not self.stop_event.is_set()
                        and time.monotonic() - self.last_drain < self.IDLE_S
                    ):
                        for n in c.notifies(timeout=0.5):
                            self.received += 1
                            try:
                                payload = json.loads(n.payload)
                            except ValueError:
                                payload = {"raw": n.payload}
                            try:
                                self.queue.put_nowait(payload)
                            except queue.Full:
                                pass
            except Exception as e:  # noqa: BLE001 - keep retrying, report in the feed
                self.connected, self.error = (
                    False,
                    str(e).splitlines()[0] if str(e) else type(e).__name__,
                )
                self.stop_event.wait(2.0)
        self.connected = False

    def drain(self) -> list[dict]:
        self.last_drain = time.monotonic()
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out


def alert_listener() -> AlertListener | None:
    url = get_url()
    if not url:
        return None
    lst = st.session_state.get("_iotpipe_listener")
    if lst is None or not lst.is_alive() or lst.url != url:
        lst = AlertListener(url)
        lst.start()
        st.session_state["_iotpipe_listener"] = lst
    return lst


# ---------------------------------------------------------------------------
# Ingest rate sampler: one per server process, fed by every live refresh
# ---------------------------------------------------------------------------


class RateSampler:
    def __init__(self, maxlen: int = 1800):
        self.samples: collections.deque = collections.deque(maxlen=maxlen)
        self.lock = threading.Lock()

    def add(self, total_readings: int, worker_rate: float):
        now = time.time()
        with self.lock:
            if self.samples and now - self.samples[-1][0] < 0.9:
                return
            self.samples.append((now, total_readings, worker_rate))

    def recent_rate(self, max_age_s: float = 10.0) -> float | None:
        """Readings/s from the counter between the last two samples, if they are recent."""
        s = self.series()
        if s and time.time() - s[-1][0] <= max_age_s:
            return s[-1][1]
        return None

    def series(self):
        """[(unix time, readings/s from the counter delta, readings/s reported by the workers)]"""
        with self.lock:
            s = list(self.samples)
        out = []
        for (t0, n0, _), (t1, n1, r1) in zip(s, s[1:]):
            if t1 > t0 and n1 >= n0:
                out.append((t1, (n1 - n0) / (t1 - t0), r1))
        return out


@st.cache_resource
def rate_sampler() -> RateSampler:
    return RateSampler()


def fmt_age(secs: float | None) -> str:
    if secs is None:
        return "—"
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{secs / 60:.1f} min"
    if secs < 86400:
        return f"{secs / 3600:.1f} h"
    return f"{secs / 86400:.1f} d"


def sidebar():
    url = get_url()
    with st.sidebar:
        st.caption(f"Database: {md(db.mask_url(url))}")
        st.text_input(
            "Acknowledge as",
            value="",
            key="ack_as",
            help="Name stored in iotpipe.alerts.acked_by when you acknowledge an alert. "
            "Empty: the database login you are connected as. Another name takes iotpipe_admin.",
        )
        st.number_input(
            "Sensor counts as online if seen within (s)",
            min_value=1,
            max_value=86400,
            value=30,
            step=5,
            key="stale_s",
        )
