"""publish_fleet_report: the monthly fleet ops report, from the run history alone.

Runbook:
  1. read the health sweep tables (artifacts `health-sweep-<depth>`, every version) and
     every hubfleet run (tags `op:`, `hub:`, `operator:`) since `since`
  2. compute availability, incidents, operations, runs that needed a human, MTTR
     (hubfleet.report, pure); and what each hub used and cost (tasks/usage.py: the
     usage samples the shallow sweeps recorded, storage measured now, the price table)
  3. publish it as a markdown artifact and return it as data
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType

from flows.operation import begin_fleet
from flows.parameters import Since
from hubfleet.audit import parse_since
from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir
from hubfleet.report import RunRecord, SweepRow, as_dict, build_report, markdown
from hubfleet.results import FleetReportPublished, ReportIncident

SWEEP_KEYS = ["health-sweep-shallow", "health-sweep-deep"]
#: The key of the published report's artifact.
REPORT_ARTIFACT = "fleet-ops-report"
#: States of a run that never started (e.g. an event's scheduled expiry, cancelled because
#: the hub was expired by hand): not an operation, so not in the report.
NEVER_RAN = {StateType.CANCELLED, StateType.SCHEDULED, StateType.PENDING}


async def collect_history(start: datetime) -> tuple[list[SweepRow], list[RunRecord]]:
    """Sweep rows and run records since `start`, read from the Prefect API."""
    sweeps: list[SweepRow] = []
    runs: list[RunRecord] = []
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=SWEEP_KEYS)),
                offset=offset,
                limit=200,
            )
            for artifact in page:
                data: Any = artifact.data
                rows = json.loads(data) if isinstance(data, str) else data or []
                for row in rows:
                    at = row.get("checked_at")
                    if not at:
                        continue
                    sweeps.append(
                        SweepRow(
                            row["hub"],
                            datetime.fromisoformat(at),
                            row["verdict"],
                            row.get("reason") or "",
                        )
                    )
            if len(page) < 200:
                break
            offset += len(page)
        offset = 0
        found: list[tuple[FlowRun, dict[str, str]]] = []
        while True:
            flow_runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=start)),
                offset=offset,
                limit=200,
            )
            for run in flow_runs:
                tags = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in run.tags if ":" in t}
                if "op" not in tags or run.start_time is None:
                    continue
                if not run.run_count and run.state_type in NEVER_RAN:
                    continue  # a scheduled run cancelled before it ran: no operation
                found.append((run, tags))
            if len(flow_runs) < 200:
                break
            offset += len(flow_runs)
        parents = await _parent_ops(client, [run for run, _ in found])
        for run, tags in found:
            assert run.start_time is not None
            state = run.state_type.value if run.state_type else "UNKNOWN"
            runs.append(
                RunRecord(
                    op=tags["op"],
                    hub=tags.get("hub"),
                    operator=tags.get("operator", "unknown"),
                    state=state,
                    start=run.start_time,
                    end=run.end_time,
                    paused=state == "PAUSED" or "approval" in run.tags,
                    run_count=run.run_count or 1,
                    parent_op=parents.get(run.id),
                )
            )
    return sweeps, runs


async def _parent_ops(client: PrefectClient, runs: list[FlowRun]) -> dict[UUID, str]:
    """For each subflow run, the `op:` tag of the run that started it (a rotation's
    per-credential runs are part of the rotation; a create's deploy is a deploy of its own).
    Runs without an op-tagged parent are left out."""
    by_task = {r.parent_task_run_id: r.id for r in runs if r.parent_task_run_id}
    if not by_task:
        return {}
    parent_run: dict[UUID, UUID] = {}
    ids = list(by_task)
    for i in range(0, len(ids), 200):
        task_runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids[i : i + 200]))
        )
        for task_run in task_runs:
            if task_run.flow_run_id is not None:
                parent_run[by_task[task_run.id]] = task_run.flow_run_id
    wanted = list(set(parent_run.values()))
    op_of: dict[UUID, str] = {}
    for i in range(0, len(wanted), 200):
        for flow_run in await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted[i : i + 200]))
        ):
            for tag in flow_run.tags:
                if tag.startswith("op:"):
                    op_of[flow_run.id] = tag[3:]
    return {child: op_of[parent] for child, parent in parent_run.items() if parent in op_of}


def _use_cases() -> dict[str, str]:
    try:
        fleet = load_fleet(fleet_dir())
    except Exception:  # the history outlives the fleet: a report never fails on it
        return {}
    return {
        f"{c.name}/{h.name}": (h.use_case.value if h.use_case else "none")
        for c in fleet.clusters
        for h in c.hubs
    }


async def _usage(start: datetime, end: datetime) -> Any:
    """What each hub used and cost (tasks/usage.py), or None when the fleet cannot be read
    or priced: the report is published without that section, and the log says why."""
    from prefect import get_run_logger

    from tasks.usage import collect_usage

    try:
        return await collect_usage(load_fleet(fleet_dir()), start, end)
    except Exception as exc:
        get_run_logger().warning("fleet report without usage and cost: %s", exc)
        return None


@flow(name="publish_fleet_report", flow_run_name="publish_fleet_report {since}")
async def publish_fleet_report(
    since: Since = "30d", operator: str | None = None
) -> FleetReportPublished:
    """Publish the fleet ops report for the last `since` (e.g. 30d) as an artifact."""
    await begin_fleet("publish_fleet_report", operator)
    start = parse_since(since)
    assert start is not None
    sweeps, runs = await collect_history(start)
    end = datetime.now(UTC)
    report = build_report(sweeps, runs, start=start, end=end, use_cases=_use_cases())
    report.usage = await _usage(start, end)
    await acreate_markdown_artifact(
        key=REPORT_ARTIFACT,
        markdown=markdown(report),
        description=f"fleet ops report, last {since}",
    )
    data = as_dict(report)
    return FleetReportPublished(
        artifact=REPORT_ARTIFACT,
        since=since,
        start=data["start"],
        end=data["end"],
        incidents=[ReportIncident(**i) for i in data["incidents"]],
        mttr_minutes=report.mttr_minutes,
        report=data,
    )
