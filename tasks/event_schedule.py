"""The scheduled runs of event hubs, and the extensions that move them.

Each event hub owns a handful of scheduled flow runs in Prefect, made with
`run_deployment(..., scheduled_time=..., timeout=0, idempotency_key=...)` (`schedule_run`), so
scheduling the same thing twice returns the first run instead of a second one. An
extension of an event's end is a Prefect variable per hub (`extension_variable`). What to
schedule and cancel is decided by `hubfleet.events.plan_schedule`; `apply_schedule` does it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from prefect.variables import Variable

from deployments.registry import deployment_of
from flows.operation import SCHEDULE_TAG, SCHEDULED_BY
from hubfleet import events
from hubfleet.events import (
    CREATE,
    EXPIRE,
    REMIND,
    EventRefused,
    Extension,
    ScheduledRun,
    WantedRun,
)
from hubfleet.model import Fleet, HubKind
from hubfleet.results import ScheduleChanges

#: The deployment each scheduled run goes through ("<flow name>/<deployment name>"), as
#: `hubfleet setup` registers them from `deployments/registry.py`.
DEPLOYMENTS = {
    CREATE: deployment_of("create_event_hub"),
    REMIND: deployment_of("remind_event_organizers"),
    EXPIRE: deployment_of("expire_event_hub"),
}
# Every run hubfleet schedules for an event hub is tagged SCHEDULE_TAG (flows/operation.py)
# and `event:<kind>` says which.


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- extensions (a Prefect variable per extended hub) -----------------------------------


def extension_variable(cluster: str, hub: str) -> str:
    # '__' never occurs in DNS-safe names, so a-b/c and a/b-c cannot collide.
    return f"hubfleet_extension__{cluster}__{hub}"


async def load_extension(cluster: str, hub: str) -> Extension | None:
    """The recorded extension of a hub's end, if any."""
    value: Any = await Variable.aget(extension_variable(cluster, hub), default=None)
    return Extension.from_json(value) if isinstance(value, dict) else None


async def all_extensions(fleet: Fleet) -> dict[tuple[str, str], Extension]:
    found = {}
    for cluster in fleet.clusters:
        for hub in cluster.hubs:
            if hub.kind is HubKind.event:
                ext = await load_extension(cluster.name, hub.name)
                if ext:
                    found[(cluster.name, hub.name)] = ext
    return found


# --- scheduled runs --------------------------------------------------------------------


async def scheduled_event_runs(
    cluster: str | None = None, hub: str | None = None
) -> list[ScheduledRun]:
    """Scheduled (not started) runs hubfleet made for event hubs, optionally of one hub."""
    tags = [SCHEDULE_TAG] + ([f"hub:{cluster}/{hub}"] if cluster and hub else [])
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=tags),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            ),
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[d.split("/")[1] for d in DEPLOYMENTS.values()])
            ),
            limit=200,
        )
    return [r for r in (_as_scheduled(run) for run in runs) if r is not None]


def _as_scheduled(run: FlowRun) -> ScheduledRun | None:
    kind = next((t.split(":", 1)[1] for t in run.tags if t.startswith("event:")), None)
    target = next((t.split(":", 1)[1] for t in run.tags if t.startswith("hub:")), None)
    if kind is None or target is None or "/" not in target:
        return None
    cluster, hub = target.split("/", 1)
    at = run.next_scheduled_start_time or run.expected_start_time or utc_now()
    return ScheduledRun(str(run.id), kind, cluster, hub, at, run.idempotency_key)


@task(task_run_name="schedule-{want.kind}-{want.cluster}-{want.hub}", cache_policy=NO_CACHE)
async def schedule_run(want: WantedRun, operator: str) -> bool:
    """Create one scheduled run of an event deployment (idempotent by its key).

    Changes: a new Scheduled flow run in Prefect, unless one with the key exists. A key
    whose run was cancelled (an extension moved back) gets a fresh run under `key#n`.
    Returns False when the key's run has already started or finished (nothing scheduled).
    """
    params: dict[str, Any] = {"cluster": want.cluster, "hub": want.hub}
    # The run records `operator:schedule:<who scheduled it>` from these tags (a deployment
    # run takes no operator parameter; see flows/operation.py).
    tags = [SCHEDULE_TAG, f"{SCHEDULED_BY}{operator}", f"event:{want.kind}"]
    tags.append(f"hub:{want.cluster}/{want.hub}")
    for attempt in range(10):
        key = want.key if attempt == 0 else f"{want.key}#{attempt}"
        try:
            run = await arun_deployment(
                DEPLOYMENTS[want.kind],
                parameters=params,
                scheduled_time=want.at,
                timeout=0,
                idempotency_key=key,
                tags=tags,
                as_subflow=False,
                flow_run_name=f"{want.kind} {want.cluster}/{want.hub} at {want.at:%Y-%m-%d %H:%M}",
            )
        except ObjectNotFound:  # deployment missing: say how to create it
            raise EventRefused(
                f"deployment {DEPLOYMENTS[want.kind]!r} does not exist; run "
                "`hubfleet setup` first (it registers the event deployments). "
                "Nothing was scheduled."
            ) from None
        state = run.state.type if run.state else None
        if state is StateType.SCHEDULED:
            get_run_logger().info(
                "%s of %s/%s scheduled at %s (run %s)",
                want.kind,
                want.cluster,
                want.hub,
                want.at.isoformat(),
                run.id,
            )
            return True
        if state is not StateType.CANCELLED:
            return False  # the key's run already started or ran: nothing to schedule
    raise EventRefused(f"could not schedule {want.kind} of {want.cluster}/{want.hub}: key reused")


@task(task_run_name="cancel-scheduled-{run.kind}-{run.cluster}-{run.hub}", cache_policy=NO_CACHE)
async def cancel_run(run: ScheduledRun, why: str) -> None:
    """Cancel a scheduled run that is no longer wanted. Changes: that run's state."""
    async with get_client() as client:
        await client.set_flow_run_state(UUID(run.id), Cancelled(message=why), force=True)
    get_run_logger().info(
        "cancelled %s of %s/%s (%s): %s", run.kind, run.cluster, run.hub, run.id, why
    )


async def apply_schedule(
    plan: events.SchedulePlan, operator: str, dry_run: bool, why: str
) -> ScheduleChanges:
    """Schedule what is missing first, then cancel what is stale: never no expiry at all."""
    scheduled: list[str] = []
    kept: list[str] = []
    cancelled: list[str] = []
    for want in plan.schedule:
        line = f"{want.kind} {want.cluster}/{want.hub} at {want.at.isoformat()}"
        if dry_run or await schedule_run(want, operator):
            scheduled.append(line)
        else:
            kept.append(f"{line} (already ran)")
    for run in plan.keep:
        kept.append(f"{run.kind} {run.cluster}/{run.hub} at {run.at.isoformat()}")
    for run in plan.cancel:
        if not dry_run:
            await cancel_run(run, why)
        cancelled.append(f"{run.kind} {run.cluster}/{run.hub} at {run.at.isoformat()}")
    return ScheduleChanges(scheduled=scheduled, kept=kept, cancelled=cancelled)


def bullets(done: ScheduleChanges) -> str:
    """The changes as markdown: each kind's count, then one bullet per run."""
    lines = []
    for what in ("scheduled", "kept", "cancelled"):
        items: list[str] = getattr(done, what)
        lines.append(f"**{what}** ({len(items)})\n")
        lines += [f"- {item}" for item in items] or ["- none"]
        lines.append("")
    return "\n".join(lines)


# --- fleet-wide runs -------------------------------------------------------------------
