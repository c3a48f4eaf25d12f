"""Read the audit log from the Prefect run history (the query side of `hubfleet audit`).

Two sources give the same rows:

- **api** (any Prefect server): the REST API (`POST /flow_runs/filter`) with plain HTTP,
  reading the JSON as it is. Importing Prefect's client and validating every run into its
  models would cost seconds. The server still serialises every field of every run
  (parameters, state details, ...), about 0.3 ms per run: 1 s for a hub's year of runs.
- **database** (PostgreSQL, `hubfleet server --postgres` or `$HUBFLEET_AUDIT_DATABASE`):
  one read-only SQL query for the six columns the audit shows, about 40 ms for the same
  year. It reads Prefect's `flow_run` table, whose columns are not a public API, so the
  query checks they exist first and falls back to the API if they do not, and a test
  compares both sources row for row on a real server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import datetime
from typing import Any

import requests

from hubfleet.audit import AuditQuery, AuditRow, to_row
from hubfleet.errors import HubfleetError
from hubfleet.paths import data_dir

#: The most runs the server returns per request.
PAGE = 200


def run_filter(query: AuditQuery, before: str | None = None) -> dict[str, Any]:
    """Tags (all of them), expected start time window, state types: all server-side."""
    flt: dict[str, Any] = {}
    if query.tags:
        flt["tags"] = {"all_": list(query.tags)}
    window = {}
    if query.since:
        window["after_"] = query.since.isoformat()
    if before:
        window["before_"] = before
    if window:
        flt["expected_start_time"] = window
    if query.states:
        flt["state"] = {"type": {"any_": list(query.states)}}
    return flt


def _headers() -> dict[str, str]:
    """Auth for a protected server: PREFECT_API_KEY, or PREFECT_API_AUTH_STRING (basic)."""
    if key := os.environ.get("PREFECT_API_KEY"):
        return {"Authorization": f"Bearer {key}"}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def fetch_audit(
    api_url: str, query: AuditQuery, ui_url: str, limit: int | None = None
) -> list[AuditRow]:
    """Every matching run, newest first (up to `limit`).

    Pages by keyset (expected start time at or before the last one seen), not offset: an
    offset makes the server skip ever more rows, which is what slows a long history.
    """
    rows: list[AuditRow] = []
    seen: set[str] = set()
    before: str | None = None
    offset = 0
    with requests.Session() as http:
        http.headers.update(_headers())
        while limit is None or len(rows) < limit:
            response = http.post(
                f"{api_url.rstrip('/')}/flow_runs/filter",
                json={
                    "flow_runs": run_filter(query, before),
                    "sort": "EXPECTED_START_TIME_DESC",
                    "limit": PAGE,
                    "offset": offset,
                },
                timeout=60,
            )
            response.raise_for_status()
            page = response.json()
            fresh = [run for run in page if run["id"] not in seen]
            if not fresh:
                if len(page) == PAGE and before is not None:
                    # A whole page shares one start time: step past it by offset instead.
                    before, offset = None, len(rows)
                    continue
                break
            for run in fresh:
                seen.add(run["id"])
                rows.append(to_row(run, ui_url))
            if len(page) < PAGE:
                break
            before, offset = page[-1]["expected_start_time"], 0
    return rows[:limit] if limit is not None else rows


# --- the database source ----------------------------------------------------------------

#: The columns of Prefect's flow_run table the audit reads (checked before querying).
COLUMNS = ("id", "name", "tags", "expected_start_time", "start_time", "created", "state_name")
SOURCES = ("auto", "api", "database")


class AuditSourceError(HubfleetError):
    """`--source database` was asked for but there is no database to read."""


def database_for(api_url: str) -> dict[str, Any] | None:
    """How to connect to the PostgreSQL behind `api_url`, when hubfleet can read it.

    `$HUBFLEET_AUDIT_DATABASE` (a postgresql:// DSN, ideally of a read-only role) wins;
    else hubfleet's own `hubfleet server --postgres` in this data dir, if it is running
    and is the server `api_url` points at. None: use the API.
    """
    if dsn := os.environ.get("HUBFLEET_AUDIT_DATABASE"):
        return {"dsn": dsn}
    from hubfleet.server import postgres_stack

    pg, server = postgres_stack(data_dir())
    if not pg.state_file.is_file() or pg.pid() is None or server.pid() is None:
        return None
    if server.api_url.rstrip("/") != api_url.rstrip("/"):
        return None
    return {"host": str(pg.socket_dir), "user": "prefect", "database": "prefect"}


def _sql(query: AuditQuery, limit: int | None) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if query.tags:
        args.append(json.dumps(list(query.tags)))
        where.append(f"tags @> ${len(args)}::jsonb")
    if query.since:
        args.append(query.since)
        where.append(f"expected_start_time >= ${len(args)}")
    if query.states:
        args.append(list(query.states))
        where.append(f"state_type::text = ANY(${len(args)}::text[])")
    sql = (
        "SELECT id::text, name, tags::text AS tags, expected_start_time, start_time, created,"
        " state_name FROM flow_run"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY expected_start_time DESC NULLS LAST, id"
    )
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    return sql, args


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def _query_database(
    connect: dict[str, Any], query: AuditQuery, limit: int | None
) -> list[dict[str, Any]] | None:
    import asyncpg  # Prefect's own PostgreSQL driver: no new dependency

    conn = await asyncpg.connect(**connect, timeout=10)
    try:
        async with conn.transaction(readonly=True):
            found = await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'flow_run' AND column_name = ANY($1::text[])",
                list(COLUMNS),
            )
            if len(found) != len(COLUMNS):
                return None  # Prefect changed its schema: the API still works
            sql, args = _sql(query, limit)
            records = await conn.fetch(sql, *args)
    finally:
        await conn.close()
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "tags": json.loads(r["tags"]),
            "expected_start_time": _iso(r["expected_start_time"]),
            "start_time": _iso(r["start_time"]),
            "created": _iso(r["created"]),
            "state": {"name": r["state_name"]},
        }
        for r in records
    ]


def fetch_audit_database(
    connect: dict[str, Any], query: AuditQuery, ui_url: str, limit: int | None = None
) -> list[AuditRow] | None:
    """Every matching run, newest first, read from PostgreSQL; None if the schema differs."""
    runs = asyncio.run(_query_database(connect, query, limit))
    return None if runs is None else [to_row(run, ui_url) for run in runs]


def read_audit(
    api_url: str, query: AuditQuery, ui_url: str, limit: int | None, source: str = "auto"
) -> tuple[list[AuditRow], str]:
    """The audit rows and the source they came from ('api' or 'database')."""
    if source not in SOURCES:
        raise AuditSourceError(f"--source {source!r}: allowed: {', '.join(SOURCES)}")
    if source != "api":
        connect = database_for(api_url)
        if connect is None and source == "database":
            raise AuditSourceError(
                f"--source database: no PostgreSQL found for {api_url}. Run the server with "
                "`hubfleet server --postgres`, or set HUBFLEET_AUDIT_DATABASE to a "
                "postgresql:// DSN of its database (a read-only role is enough)"
            )
        if connect is not None:
            rows = fetch_audit_database(connect, query, ui_url, limit)
            if rows is not None:
                return rows, "database"
            if source == "database":
                raise AuditSourceError(
                    "--source database: Prefect's flow_run table lacks the columns "
                    f"{', '.join(COLUMNS)} (a newer Prefect?); use --source api"
                )
    return fetch_audit(api_url, query, ui_url, limit), "api"
