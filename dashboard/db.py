"""Database access for the dashboard and the report, without Streamlit.

Configuration: the connection URL comes from the environment variable
IOTPIPE_DASHBOARD_URL, else from ``.streamlit/secrets.toml``
(``[connections.iotpipe] url = "postgresql://..."``; read by the app).
After connecting, the session switches to the role named by
IOTPIPE_DASHBOARD_ROLE (default ``iotpipe_operator``) when the login role
may use it, so the dashboard runs with exactly the operator's privileges.

Errors are classified so that pages can say what is wrong in words
(``describe_error``) instead of showing a traceback.
"""

from __future__ import annotations

import os
import re

import pandas as pd
import psycopg
from psycopg import errors as pgerr

DEFAULT_ROLE = "iotpipe_operator"
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 10000


class NoUrl(Exception):
    """No connection URL configured."""


def mask_url(url: str | None) -> str:
    """The URL with any password replaced by ***."""
    if not url:
        return "(none)"
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def connect(
    url: str, role: str | None = None, autocommit: bool = True
) -> psycopg.Connection:
    """Open a dashboard connection: short connect timeout, statement timeout, operator role."""
    if not url:
        raise NoUrl("no database URL configured")
    conn = psycopg.connect(
        url,
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="iotpipe-dashboard",
    )
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    conn.execute("SET TIME ZONE 'UTC'")
    # short index-driven queries: JIT compilation (triggered by the LATERAL plans' cost
    # estimates) costs more than the queries themselves
    conn.execute("SET jit = off")
    role = (
        os.environ.get("IOTPIPE_DASHBOARD_ROLE", DEFAULT_ROLE) if role is None else role
    )
    if role:
        member = conn.execute(
            "SELECT r.rolname IS NOT NULL AND r.rolname <> current_user AND pg_has_role(current_user, r.oid, 'MEMBER')"
            " FROM (SELECT NULL) x LEFT JOIN pg_roles r ON r.rolname = %s",
            (role,),
        ).fetchone()[0]
        if member:
            conn.execute(
                psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role))
            )
    return conn


def query_df(
    conn: psycopg.Connection, sql: str, params: dict | tuple | None = None
) -> pd.DataFrame:
    """Run a query and return its rows as a DataFrame (columns named as in the SELECT)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        cols = [d.name for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
    return pd.DataFrame(rows, columns=cols)


def query_one(conn: psycopg.Connection, sql: str, params: dict | tuple | None = None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def extension_version(conn: psycopg.Connection) -> str | None:
    row = query_one(
        conn, "SELECT extversion FROM pg_extension WHERE extname = 'iotpipe'"
    )
    return row[0] if row else None


def pending_update(conn: psycopg.Connection) -> tuple[str, str] | None:
    """(installed, library) when the server's iotpipe library is newer than the
    installed SQL (ALTER EXTENSION iotpipe UPDATE not run yet), else None."""
    row = query_one(
        conn,
        "SELECT installed_version, default_version FROM pg_available_extensions "
        "WHERE name = 'iotpipe'",
    )
    if row and row[0] and row[0] != row[1]:
        return row[0], row[1]
    return None


UNREACHABLE = "unreachable"
NOT_AVAILABLE = "not_available"
NO_PRIVILEGE = "no_privilege"
OTHER = "other"


def classify_error(exc: BaseException) -> str:
    if isinstance(exc, NoUrl):
        return UNREACHABLE
    if isinstance(
        exc,
        (
            pgerr.UndefinedTable,
            pgerr.UndefinedFunction,
            pgerr.InvalidSchemaName,
            pgerr.UndefinedColumn,
            pgerr.UndefinedObject,
        ),
    ):
        return NOT_AVAILABLE
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return NO_PRIVILEGE
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return UNREACHABLE
    return OTHER


def describe_error(exc: BaseException, what: str = "this section") -> str:
    """One sentence for a page, saying what failed and what to do."""
    kind = classify_error(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if kind == UNREACHABLE:
        return f"The database is unreachable ({first}). Check that PostgreSQL is running and the URL is right."
    if kind == NOT_AVAILABLE:
        return f"{what[:1].upper() + what[1:]}: not available yet ({first})."
    if kind == NO_PRIVILEGE:
        return f"The dashboard role may not read {what}: {first}."
    return f"{what.capitalize()} failed: {first}."
