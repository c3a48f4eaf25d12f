"""Read the audit log from the Prefect run history (the query side of `hubfleet audit`)."""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from hubfleet.audit import AuditQuery, AuditRow, to_row

#: The most runs the server returns per request.
PAGE = 200


def run_filter(query: AuditQuery) -> FlowRunFilter:
    """Tags (all of them), expected start after `since`, state types: all server-side."""
    return FlowRunFilter(
        tags=FlowRunFilterTags(all_=list(query.tags)) if query.tags else None,
        expected_start_time=(
            FlowRunFilterExpectedStartTime(after_=query.since) if query.since else None
        ),
        state=(
            FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in query.states])
            )
            if query.states
            else None
        ),
    )


async def fetch_audit(
    client: PrefectClient, query: AuditQuery, ui_url: str, limit: int | None = None
) -> list[AuditRow]:
    """Every matching run, newest first (up to `limit`)."""
    flt = run_filter(query)
    rows: list[AuditRow] = []
    while limit is None or len(rows) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(rows))
        page = await client.read_flow_runs(
            flow_run_filter=flt,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=size,
            offset=len(rows),
        )
        rows += [to_row(run, ui_url) for run in page]
        if len(page) < size:
            break
    return rows
