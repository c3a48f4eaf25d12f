"""`create_event_hub`: deploy an event hub, pre-warm it, schedule its reminders and expiry.

A create run made before start - lead time deploys the hub but does not warm yet; it
schedules the create run at start - lead time (the same idempotency key
`sync_event_schedules` uses), which warms then.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from flows.deploy_hub import deploy_hub
from flows.event_hubs.prewarm import PREWARM_TOLERANCE_S, prewarm_capacity
from flows.operation import begin_hub
from hubfleet import events
from hubfleet.events import (
    CREATE,
    EventRefused,
)
from hubfleet.model import Provider
from hubfleet.paths import data_dir
from hubfleet.results import EventHubCreated
from tasks.event_schedule import (
    apply_schedule,
    bullets,
    load_extension,
    scheduled_event_runs,
    utc_now,
)


@flow(name="create_event_hub", flow_run_name="create_event_hub {cluster}/{hub}")
async def create_event_hub(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> EventHubCreated:
    """Deploy an event hub, pre-warm it, and schedule its reminders and expiry."""
    op = await begin_hub("create_event_hub", cluster, hub, operator)
    spec = events.event_spec(op.cluster, op.hub)
    times = events.event_times(spec, await load_extension(cluster, hub))
    if utc_now() >= times.end:
        raise EventRefused(
            f"{op.target}: the event ended {times.end.isoformat()}; nothing to create "
            "(the reaper expires it). Nothing was changed."
        )
    events.export_url(op.cluster, op.hub, str(data_dir() / "exports"), "check")  # fail early
    local = op.cluster.provider is Provider.local
    # Before start - lead time the hub is deployed but capacity is not warmed yet: the create
    # run scheduled at that time (below) warms it. Placeholders cost nodes; days early is waste.
    early = not local and (times.create_at - utc_now()).total_seconds() > PREWARM_TOLERANCE_S

    deployed = await deploy_hub(cluster, hub, dry_run=dry_run, operator=op.operator)
    if early:
        prewarm = (
            f"not yet: warmed at {times.create_at.isoformat()} (start - lead time) by the "
            "create run scheduled then"
        )
    else:
        prewarm = await prewarm_capacity(op, events.prewarm_size(spec), dry_run)
    wanted = events.wanted_runs(
        cluster,
        hub,
        spec,
        utc_now(),
        extension=await load_extension(cluster, hub),
        include_create=early,
    )
    existing = [r for r in await scheduled_event_runs(cluster, hub) if early or r.kind != CREATE]
    done = await apply_schedule(
        events.plan_schedule(wanted, existing), op.operator, dry_run, "replaced by create"
    )
    await acreate_markdown_artifact(
        key=f"event-create-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}create event hub {op.target}\n\n"
        f"| | |\n|---|---|\n| deploy | {deployed.action} |\n| pre-warm | {prewarm} |\n"
        f"| start | {events.local_time(times.start, spec.timezone)} |\n"
        f"| end | {events.local_time(times.end, spec.timezone)} |\n"
        f"| expires | {events.local_time(times.expire_at, spec.timezone)} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n\n{bullets(done)}",
        description=f"create event hub {op.target}",
    )
    return EventHubCreated(
        hub=op.target, deploy=deployed, prewarm=prewarm, dry_run=dry_run, **done.model_dump()
    )
