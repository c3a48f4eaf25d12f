"""`sync_event_schedules`: make the event hubs' scheduled runs match the fleet."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from flows.operation import begin_fleet
from hubfleet import events
from hubfleet.model import HubKind
from hubfleet.paths import data_dir
from hubfleet.results import EventSchedulesSynced
from tasks.event_presence import running_event_hubs
from tasks.event_schedule import (
    all_extensions,
    apply_schedule,
    bullets,
    scheduled_event_runs,
    utc_now,
)


@flow(name="sync_event_schedules", flow_run_name="sync_event_schedules")
async def sync_event_schedules(
    dry_run: bool = False, operator: str | None = None
) -> EventSchedulesSynced:
    """Make the scheduled runs match the fleet: new events scheduled, changed ones moved,
    removed ones cancelled."""
    op = await begin_fleet("sync_event_schedules", operator)
    fleet, who = op.fleet, op.operator
    now = utc_now()
    for cluster in fleet.clusters:  # a cloud event without an export target fails here, early
        for hub in cluster.hubs:
            if hub.kind is HubKind.event:
                events.export_url(cluster, hub, str(data_dir() / "exports"), "check")
    running = await running_event_hubs(fleet)
    wanted = events.fleet_wanted_runs(fleet, now, await all_extensions(fleet), running)
    plan = events.plan_schedule(wanted, await scheduled_event_runs())
    done = await apply_schedule(plan, who, dry_run, "fleet changed (sync)")
    await acreate_markdown_artifact(
        key="event-sync",
        markdown=f"# {'Dry run: ' if dry_run else ''}event schedules\n\n{bullets(done)}",
        description=f"event sync: {len(done.scheduled)} scheduled, {len(done.cancelled)} cancelled",
    )
    return EventSchedulesSynced(dry_run=dry_run, **done.model_dump())
