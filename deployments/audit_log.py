"""Read the audit log from the Prefect run history (the query side of `hubfleet audit`)."""

from __future__ import annotations

from uuid import UUID

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
    """Every matching run, newest first (up to `limit`).

    Pages by keyset (expected start time at or before the last one seen), not offset: an
    offset makes the server skip ever more rows, which is what slows a long history.
    """
    rows: list[AuditRow] = []
    seen: set[UUID] = set()
    before = None
    while limit is None or len(rows) < limit:
        flt = run_filter(query)
        if before is not None:
            flt.expected_start_time = FlowRunFilterExpectedStartTime(
                after_=query.since, before_=before
            )
        page = await client.read_flow_runs(
            flow_run_filter=flt,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=PAGE,
            offset=0 if before is not None or not rows else len(rows),
        )
        fresh = [run for run in page if run.id not in seen]
        if not fresh:
            if len(page) == PAGE and before is not None:
                # A whole page shares one start time: step past it by offset instead.
                before = None
                continue
            break
        for run in fresh:
            seen.add(run.id)
            rows.append(to_row(run, ui_url))
        if len(page) < PAGE:
            break
        before = page[-1].expected_start_time
    return rows[:limit] if limit is not None else rows
