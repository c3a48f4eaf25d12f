"""`extend_event_hub`: move an event's end; the old expiry and reminders are replaced."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.variables import Variable

from flows.operation import begin_hub
from hubfleet import events
from hubfleet.events import (
    CREATE,
    EventRefused,
    Extension,
)
from hubfleet.results import EventHubExtended
from tasks.event_schedule import (
    apply_schedule,
    bullets,
    extension_variable,
    scheduled_event_runs,
    utc_now,
)

#: The furthest an extension may move an event's end.
MAX_EXTENSION = timedelta(days=365)


@flow(name="extend_event_hub", flow_run_name="extend_event_hub {cluster}/{hub}")
async def extend_event_hub(
    cluster: str,
    hub: str,
    new_end: datetime,
    dry_run: bool = False,
    operator: str | None = None,
) -> EventHubExtended:
    """Move an event's end: schedule the new expiry and reminders, cancel the old runs."""
    op = await begin_hub("extend_event_hub", cluster, hub, operator)
    spec = events.event_spec(op.cluster, op.hub)
    if new_end.tzinfo is None:
        raise EventRefused(f"new_end {new_end.isoformat()} has no UTC offset; add one, e.g. +00:00")
    if new_end > spec.end + MAX_EXTENSION:
        raise EventRefused(
            f"new_end {new_end.isoformat()} is more than {MAX_EXTENSION.days} days after the "
            f"event's end ({spec.end.isoformat()}); an event hub that long should be a standing "
            "hub (kind: standing). Nothing was changed."
        )
    if new_end <= max(spec.start, utc_now()):
        raise EventRefused(
            f"new_end {new_end.isoformat()} is not in the future (after start and now); to end "
            "the event sooner, change `end` in the fleet. Nothing was changed."
        )
    extension = Extension(new_end, spec.end)
    wanted = events.wanted_runs(
        cluster, hub, spec, utc_now(), extension=extension, include_create=False
    )
    existing = [r for r in await scheduled_event_runs(cluster, hub) if r.kind != CREATE]
    plan = events.plan_schedule(wanted, existing)
    if not dry_run:
        # Recorded first, so a reaper running meanwhile already sees the later end.
        await Variable.aset(extension_variable(cluster, hub), extension.to_json(), overwrite=True)
    done = await apply_schedule(plan, op.operator, dry_run, f"event extended to {new_end}")
    await acreate_markdown_artifact(
        key=f"event-extend-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}extend {op.target}\n\n"
        f"End moved from {spec.end.isoformat()} to {new_end.isoformat()} "
        f"(expires {(new_end + spec.grace).isoformat()}).\n\n"
        f"Record it in the fleet too (`end: {new_end.isoformat()}`): until the fleet's end "
        "changes, this extension holds; once it changes, the fleet wins.\n\n"
        f"{bullets(done)}",
        description=f"extend {op.target} to {new_end.isoformat()}",
    )
    return EventHubExtended(hub=op.target, new_end=new_end, dry_run=dry_run, **done.model_dump())
