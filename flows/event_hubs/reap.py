"""`reap_expired_event_hubs` (hourly): expire what the scheduled runs missed; report
overdue creations; keep each cluster's placeholders right.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.event_hubs.expire import expire_event_hub
from flows.event_hubs.prewarm import set_placeholders
from flows.operation import begin_fleet
from hubfleet import events
from hubfleet.errors import HubfleetError
from hubfleet.model import Provider
from hubfleet.results import Reaped, ReaperRun
from tasks.event_presence import present_event_hubs
from tasks.event_schedule import (
    all_extensions,
    utc_now,
)


@flow(name="reap_expired_event_hubs", flow_run_name="reap_expired_event_hubs")
async def reap_expired_event_hubs(dry_run: bool = False, operator: str | None = None) -> ReaperRun:
    """Hourly: expire event hubs past end + grace that still exist; report overdue creations;
    keep each Kubernetes cluster's placeholders at the sum over its warm events (an event
    that ended stops holding capacity before its expiry; a missed pre-warm is caught up)."""
    op = await begin_fleet("reap_expired_event_hubs", operator)
    fleet, who = op.fleet, op.operator
    now = utc_now()
    present = await present_event_hubs(fleet)
    items = events.reap_plan(fleet, now, present, await all_extensions(fleet))
    failed: list[str] = []
    failures: dict[str, str] = {}
    outcome: dict[str, Reaped] = {}
    for item in items:
        target = f"{item.cluster}/{item.hub}"
        if item.verdict is not events.ReapVerdict.expire:
            outcome[target] = Reaped(item.verdict.value)
            continue
        try:
            await expire_event_hub(item.cluster, item.hub, dry_run=dry_run, operator=who)
            outcome[target] = Reaped.would_expire if dry_run else Reaped.expired
        except Exception as exc:  # one hub's failure must not stop the others
            get_run_logger().error("expiring %s failed: %s", target, exc)
            outcome[target] = Reaped.failed
            failures[target] = str(exc)
            failed.append(f"expiring {target}")
    warmed: dict[str, str] = {}
    for cluster in fleet.clusters:
        observed = [present.get((cluster.name, h.name)) for h in cluster.hubs]
        if cluster.provider is Provider.local or not any(v is not None for v in observed):
            continue  # no placeholders on local; an unreachable cluster is reported above
        try:
            warmed[cluster.name] = await set_placeholders(fleet, cluster, who, dry_run)
        except Exception as exc:
            get_run_logger().error("placeholders of %s: %s", cluster.name, exc)
            warmed[cluster.name] = f"FAILED: {exc}"
            failures[cluster.name] = str(exc)
            failed.append(f"placeholders of {cluster.name}")
    overdue = [
        f"{i.cluster}/{i.hub}" for i in items if i.verdict is events.ReapVerdict.overdue_create
    ]
    rows = "\n".join(
        f"| {i.cluster}/{i.hub} | {i.verdict.value} | {i.reason} | "
        f"{_outcome(f'{i.cluster}/{i.hub}', outcome, failures)} |"
        for i in items
    )
    await acreate_markdown_artifact(
        key="event-reaper",
        markdown=f"# {'Dry run: ' if dry_run else ''}event hub reaper\n\n"
        f"| hub | verdict | why | outcome |\n|---|---|---|---|\n{rows}\n\n"
        f"Overdue creations: {', '.join(overdue) or 'none'}\n\n"
        + "".join(f"- pre-warm {c}: {line}\n" for c, line in warmed.items()),
        description=f"reaper: {sum(1 for v in outcome.values() if v is Reaped.expired)} expired, "
        f"{len(overdue)} overdue, {len(failed)} failed",
    )
    if failed:
        raise HubfleetError(f"reaper: {', '.join(failed)} failed; see the runs")
    return ReaperRun(
        hubs=outcome, failures=failures, overdue=overdue, placeholders=warmed, dry_run=dry_run
    )


def _outcome(hub: str, outcome: dict[str, Reaped], failures: dict[str, str]) -> str:
    """A hub's outcome in the reaper's table: a failure says why."""
    if outcome[hub] is Reaped.failed:
        return f"FAILED: {failures[hub]}"
    return str(outcome[hub])
