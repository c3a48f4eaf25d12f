"""Read the audit log from the Prefect run history (the query side of `hubfleet audit`).

It calls the REST API (`POST /flow_runs/filter`) with plain HTTP and reads the JSON as it
is: importing Prefect's client and validating every run into its models costs seconds,
which is most of the time an audit of a long history would take.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import requests

from hubfleet.audit import AuditQuery, AuditRow, to_row

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
