"""Event hubs: created on time, pre-warmed, reminded, exported and expired automatically.

Each event hub owns a handful of *scheduled flow runs* in Prefect, made with
`run_deployment(..., scheduled_time=..., timeout=0, idempotency_key=...)`, so scheduling
the same thing twice returns the first run instead of a second one:

* `create_event_hub` at start - pre-warm lead time (by `sync_event_schedules`);
* `remind_event_organizers` at each reminder offset before expiry;
* `expire_event_hub` at end + grace.

`reap_expired_event_hubs` (hourly) expires whatever those runs missed and reports hubs
whose creation is overdue. What may be expired is decided by `hubfleet.events`: only
`kind: event` hubs past their end, whatever the input.

The runs go through the deployments `hubfleet setup` registers (see `DEPLOYMENTS`), so a
worker on the hubfleet pool runs them at their time.

Kubernetes (gcp, aws, azure, kubeconfig): pre-warm sets the support chart's user-placeholder
replicas (`deploy_support(placeholders=N)`). Placeholders belong to the cluster, so N is
always recomputed as the sum over the cluster's warm events (`events.warm_hubs`), never
incremented: creating an event raises it, expiring one lowers it to what the others still
need. A create run made before start - lead time deploys the hub but does not warm yet; it
schedules the create run at start - lead time (the same idempotency key `sync_event_schedules`
uses), which warms then.

Expiry, on every provider: health snapshot, export and verify (`teardown_hub.export_hub_homes`:
files on `local`, an in-cluster Job on Kubernetes), then `teardown_hub(keep_data=False)`,
all under one hub lock, so there is one way a hub is removed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.blocks.core import Block
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
from prefect.runtime import flow_run
from prefect.states import Cancelled
from prefect.variables import Variable

from flows.check_hub_health import check_hub_health
from flows.deploy_fleet import _current_placeholders, deploy_support
from flows.deploy_hub import deploy_hub
from flows.operation import SCHEDULE_TAG, SCHEDULED_BY, Operation, begin, begin_fleet
from flows.parameters import ExportTimeout
from flows.teardown_hub import export_hub_homes, teardown_hub
from hubfleet import events
from hubfleet.errors import HubfleetError
from hubfleet.events import (
    CREATE,
    EXPIRE,
    REMIND,
    EventRefused,
    Extension,
    ScheduledRun,
    WantedRun,
)
from hubfleet.model import Cluster, Fleet, HubKind, Provider
from hubfleet.paths import data_dir
from tasks import helm as helm_tasks
from tasks import kube
from tasks.cluster_session import cluster_session
from tasks.export import ExportResult
from tasks.helm import in_thread
from tasks.kube_export import user_volumes
from tasks.local_hub import local_hub
from tasks.locks import ensure_concurrency_limits_once, hub_lock

#: The deployment each scheduled run goes through ("<flow name>/<deployment name>").
#: They are registered by `hubfleet setup` from `deployments/registry.py` (name "default").
DEPLOYMENTS = {
    CREATE: "create_event_hub/default",
    REMIND: "remind_event_organizers/default",
    EXPIRE: "expire_event_hub/default",
}
# Every run hubfleet schedules for an event hub is tagged SCHEDULE_TAG (flows/operation.py)
# and `event:<kind>` says which.


#: The furthest an extension may move an event's end.
MAX_EXTENSION = timedelta(days=365)


def _now() -> datetime:
    return datetime.now(UTC)


# --- extensions (a Prefect variable per extended hub) -----------------------------------


def _extension_var(cluster: str, hub: str) -> str:
    # '__' never occurs in DNS-safe names, so a-b/c and a/b-c cannot collide.
    return f"hubfleet_extension__{cluster}__{hub}"


async def load_extension(cluster: str, hub: str) -> Extension | None:
    """The recorded extension of a hub's end, if any."""
    value: Any = await Variable.aget(  # type: ignore[func-returns-value]
        _extension_var(cluster, hub), default=None
    )
    return Extension.from_json(value) if isinstance(value, dict) else None


async def _all_extensions(fleet: Fleet) -> dict[tuple[str, str], Extension]:
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
    at = run.next_scheduled_start_time or run.expected_start_time or _now()
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
        except Exception as exc:  # deployment missing: say how to create it
            if "not found" in str(exc).lower() or type(exc).__name__ == "ObjectNotFound":
                raise EventRefused(
                    f"deployment {DEPLOYMENTS[want.kind]!r} does not exist; run "
                    "`hubfleet setup` first (it registers the event deployments). "
                    "Nothing was scheduled."
                ) from None
            raise
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


async def _apply_schedule(
    plan: events.SchedulePlan, operator: str, dry_run: bool, why: str
) -> dict[str, list[str]]:
    """Schedule what is missing first, then cancel what is stale: never no expiry at all."""
    done: dict[str, list[str]] = {"scheduled": [], "kept": [], "cancelled": []}
    for want in plan.schedule:
        line = f"{want.kind} {want.cluster}/{want.hub} at {want.at.isoformat()}"
        if dry_run or await schedule_run(want, operator):
            done["scheduled"].append(line)
        else:
            done["kept"].append(f"{line} (already ran)")
    for run in plan.keep:
        done["kept"].append(f"{run.kind} {run.cluster}/{run.hub} at {run.at.isoformat()}")
    for run in plan.cancel:
        if not dry_run:
            await cancel_run(run, why)
        done["cancelled"].append(f"{run.kind} {run.cluster}/{run.hub} at {run.at.isoformat()}")
    return done


def _bullets(done: dict[str, list[str]]) -> str:
    lines = []
    for what, items in done.items():
        lines.append(f"**{what}** ({len(items)})\n")
        lines += [f"- {item}" for item in items] or ["- none"]
        lines.append("")
    return "\n".join(lines)


# --- fleet-wide runs -------------------------------------------------------------------


async def helm_present(cluster: Cluster) -> dict[str, bool]:
    """Which hubs of a Kubernetes cluster have their Helm release (release = namespace =
    hub name). Changes nothing."""
    async with cluster_session(cluster.name) as session:
        releases = await helm_tasks.helm_releases(session.helm)
    names = {(r["name"], r["namespace"]) for r in releases}
    return {h.name: (h.name, h.name) in names for h in cluster.hubs}


async def _present(fleet: Fleet) -> dict[tuple[str, str], bool | None]:
    """Which event hubs exist: local hubs by their directory, Kubernetes hubs by their Helm
    release; a cluster that cannot be reached is unobserved (None), with a warning."""
    seen: dict[tuple[str, str], bool | None] = {}
    for cluster in fleet.clusters:
        hubs = [h for h in cluster.hubs if h.kind is HubKind.event]
        if not hubs:
            continue
        if cluster.provider is Provider.local:
            for hub in hubs:
                seen[(cluster.name, hub.name)] = local_hub(
                    fleet, cluster.name, hub.name
                ).directory.is_dir()
            continue
        try:
            present: dict[str, bool] | None = await helm_present(cluster)
        except Exception as exc:  # one unreachable cluster must not blind the others
            get_run_logger().warning("%s: cannot list Helm releases: %s", cluster.name, exc)
            present = None
        for hub in hubs:
            seen[(cluster.name, hub.name)] = present[hub.name] if present is not None else None
    return seen


async def _running(fleet: Fleet) -> dict[tuple[str, str], bool | None]:
    """Local hubs: processes running; Kubernetes hubs: the release exists."""
    return {
        key: (
            local_hub(fleet, *key).is_running()
            if present is not None and fleet.cluster(key[0]).provider is Provider.local
            else present
        )
        for key, present in (await _present(fleet)).items()
    }


# --- pre-warm: the cluster's placeholders -----------------------------------------------------

#: A scheduled create run may start a moment before its time; within this it counts as due.
PREWARM_TOLERANCE_S = 60


async def set_placeholders(
    fleet: Fleet,
    cluster: Cluster,
    operator: str,
    dry_run: bool,
    *,
    include: str | None = None,
    exclude: str | None = None,
) -> str:
    """Set the cluster's user-placeholder replicas to the sum over its warm events.

    Changes (unless dry_run or already right): the support release, through the
    `deploy_support` flow (under the cluster lock). Returns what was (or would be) set.
    """
    present = await helm_present(cluster)
    warm = events.warm_hubs(
        cluster,
        _now(),
        present,
        await _all_extensions(fleet),
        include=include,
        exclude=exclude,
    )
    total = sum(warm.values())
    async with cluster_session(cluster.name) as session:
        current = await in_thread(_current_placeholders, session.helm)
    why = ", ".join(f"{h}: {n}" for h, n in sorted(warm.items())) or "no warm event"
    if dry_run:
        line = f"would set {cluster.name}'s placeholders to {total} (now {current}; {why})"
    elif total == current:
        line = f"{cluster.name}'s placeholders stay at {total} ({why})"
    else:
        await deploy_support(cluster.name, operator=operator, placeholders=total)
        line = f"{cluster.name}'s placeholders {current} -> {total} ({why})"
    get_run_logger().info("pre-warm: %s", line)
    return line


# --- the flows ---------------------------------------------------------------------


@flow(name="create_event_hub", flow_run_name="create_event_hub {cluster}/{hub}")
async def create_event_hub(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> dict[str, Any]:
    """Deploy an event hub, pre-warm it, and schedule its reminders and expiry."""
    op = await begin("create_event_hub", cluster, hub, operator)
    assert op.hub is not None
    spec = events.event_spec(op.cluster, op.hub)
    times = events.event_times(spec, await load_extension(cluster, hub))
    if _now() >= times.end:
        raise EventRefused(
            f"{op.target}: the event ended {times.end.isoformat()}; nothing to create "
            "(the reaper expires it). Nothing was changed."
        )
    events.export_url(op.cluster, op.hub, str(data_dir() / "exports"), "check")  # fail early
    local = op.cluster.provider is Provider.local
    # Before start - lead time the hub is deployed but capacity is not warmed yet: the create
    # run scheduled at that time (below) warms it. Placeholders cost nodes; days early is waste.
    early = not local and (times.create_at - _now()).total_seconds() > PREWARM_TOLERANCE_S

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
        _now(),
        extension=await load_extension(cluster, hub),
        include_create=early,
    )
    existing = [r for r in await scheduled_event_runs(cluster, hub) if early or r.kind != CREATE]
    done = await _apply_schedule(
        events.plan_schedule(wanted, existing), op.operator, dry_run, "replaced by create"
    )
    await acreate_markdown_artifact(
        key=f"event-create-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}create event hub {op.target}\n\n"
        f"| | |\n|---|---|\n| deploy | {deployed.get('action')} |\n| pre-warm | {prewarm} |\n"
        f"| start | {events.local_time(times.start, spec.timezone)} |\n"
        f"| end | {events.local_time(times.end, spec.timezone)} |\n"
        f"| expires | {events.local_time(times.expire_at, spec.timezone)} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n\n{_bullets(done)}",
        description=f"create event hub {op.target}",
    )
    return {"hub": op.target, "deploy": deployed, "prewarm": prewarm, "dry_run": dry_run, **done}


async def prewarm_capacity(op: Operation, size: int, dry_run: bool) -> str:
    """Warm `size` placeholder pods for the event (Kubernetes); a no-op on `local`.

    On Kubernetes the cluster's placeholders become the sum over its warm events, this one
    included (see `set_placeholders`).
    """
    if op.cluster.provider is Provider.local:
        note = (
            f"no-op on local (a local hub spawns user servers as processes on demand; "
            f"{size} placeholder(s) would be warmed on Kubernetes)"
        )
        get_run_logger().info("pre-warm %s: %s", op.target, note)
        return note
    assert op.hub is not None
    return await set_placeholders(op.fleet, op.cluster, op.operator, dry_run, include=op.hub.name)


@flow(name="remind_event_organizers", flow_run_name="remind_event_organizers {cluster}/{hub}")
async def remind_event_organizers(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> dict[str, Any]:
    """Tell the event's organizers when their hub expires, through the notification blocks."""
    op = await begin("remind_event_organizers", cluster, hub, operator)
    assert op.hub is not None
    spec = events.event_spec(op.cluster, op.hub)
    times = events.event_times(spec, await load_extension(cluster, hub))
    now = _now()
    if now >= times.expire_at:
        get_run_logger().info("%s already expired at %s; no reminder", op.target, times.expire_at)
        return {"hub": op.target, "sent": [], "reason": "already past expiry"}
    where = (
        "exported, then deleted" if spec.data_policy.value == "export" else "deleted (not exported)"
    )
    subject = f"[hubfleet] {op.hub.domain} expires in {events._human(times.expire_at - now)}"
    body = (
        f"To: {', '.join(spec.organizers)}\n\n"
        f"The event hub {op.target} ({op.hub.domain}) will be removed at "
        f"{events.local_time(times.expire_at, spec.timezone)} "
        f"(event end {events.local_time(times.end, spec.timezone)} + grace).\n"
        f"Home directories will be {where}.\n"
        f"To keep it longer, ask the ops team to extend it (extend_event_hub) or change `end`."
    )
    sent = [] if dry_run else await notify(op.fleet, subject, body)
    await acreate_markdown_artifact(
        key=f"event-reminder-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}reminder for {op.target}\n\n"
        f"**{subject}**\n\n```\n{body}\n```\n\nSent through: {', '.join(sent) or 'nothing'}\n",
        description=f"reminder for {op.target}",
    )
    return {"hub": op.target, "sent": sent, "subject": subject, "dry_run": dry_run}


@task(task_run_name="notify", cache_policy=NO_CACHE)
async def notify(fleet: Fleet, subject: str, body: str) -> list[str]:
    """Send through every notification block named in `fleet.yaml` (`notify:`).

    Changes: nothing in hubfleet; the blocks deliver a message. Fails if the blocks named
    do not exist, so a reminder is never silently dropped; with `notify: []` (the fleet
    names none, e.g. the demo's fleet offline) it is sent nowhere and says so in the log.
    """
    names = set(fleet.settings.notify)
    if not names:
        get_run_logger().warning(
            "no notification target: fleet.yaml has `notify: []`; the message is recorded "
            "in this run (its artifact), not sent"
        )
        return []
    async with get_client() as client:
        docs = await client.read_block_documents(include_secrets=True, limit=200)
    blocks = [
        d
        for d in docs
        if d.name in names and d.block_schema and "notify" in d.block_schema.capabilities
    ]
    if not blocks:
        raise EventRefused(
            f"no notification block named {', '.join(sorted(names)) or '(none listed)'} exists; "
            "create one (e.g. a Custom Webhook block) or fix `notify` in fleet/fleet.yaml"
        )
    sent = []
    for doc in blocks:
        block = Block._from_block_document(doc)
        await block.notify(body=body, subject=subject)  # type: ignore[attr-defined]
        sent.append(str(doc.name))
    return sent


@flow(name="extend_event_hub", flow_run_name="extend_event_hub {cluster}/{hub}")
async def extend_event_hub(
    cluster: str,
    hub: str,
    new_end: datetime,
    dry_run: bool = False,
    operator: str | None = None,
) -> dict[str, Any]:
    """Move an event's end: schedule the new expiry and reminders, cancel the old runs."""
    op = await begin("extend_event_hub", cluster, hub, operator)
    assert op.hub is not None
    spec = events.event_spec(op.cluster, op.hub)
    if new_end.tzinfo is None:
        raise EventRefused(f"new_end {new_end.isoformat()} has no UTC offset; add one, e.g. +00:00")
    if new_end > spec.end + MAX_EXTENSION:
        raise EventRefused(
            f"new_end {new_end.isoformat()} is more than {MAX_EXTENSION.days} days after the "
            f"event's end ({spec.end.isoformat()}); an event hub that long should be a standing "
            "hub (kind: standing). Nothing was changed."
        )
    if new_end <= max(spec.start, _now()):
        raise EventRefused(
            f"new_end {new_end.isoformat()} is not in the future (after start and now); to end "
            "the event sooner, change `end` in the fleet. Nothing was changed."
        )
    extension = Extension(new_end, spec.end)
    wanted = events.wanted_runs(
        cluster, hub, spec, _now(), extension=extension, include_create=False
    )
    existing = [r for r in await scheduled_event_runs(cluster, hub) if r.kind != CREATE]
    plan = events.plan_schedule(wanted, existing)
    if not dry_run:
        # Recorded first, so a reaper running meanwhile already sees the later end.
        await Variable.aset(_extension_var(cluster, hub), extension.to_json(), overwrite=True)
    done = await _apply_schedule(plan, op.operator, dry_run, f"event extended to {new_end}")
    await acreate_markdown_artifact(
        key=f"event-extend-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}extend {op.target}\n\n"
        f"End moved from {spec.end.isoformat()} to {new_end.isoformat()} "
        f"(expires {(new_end + spec.grace).isoformat()}).\n\n"
        f"Record it in the fleet too (`end: {new_end.isoformat()}`): until the fleet's end "
        "changes, this extension holds; once it changes, the fleet wins.\n\n"
        f"{_bullets(done)}",
        description=f"extend {op.target} to {new_end.isoformat()}",
    )
    return {"hub": op.target, "new_end": new_end.isoformat(), "dry_run": dry_run, **done}


@flow(name="expire_event_hub", flow_run_name="expire_event_hub {cluster}/{hub}")
async def expire_event_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    operator: str | None = None,
    export_timeout: ExportTimeout = 3600.0,
) -> dict[str, Any]:
    """Expire an event hub that is over: snapshot, export, remove (`teardown_hub` with
    keep_data=false), lower the placeholders, record.

    export_timeout: seconds the export of the homes may take before the expiry fails (and
    the hub stays).
    """
    started = _now()
    op = await begin("expire_event_hub", cluster, hub, operator)
    assert op.hub is not None
    # The safety rule, first: standing hubs and unfinished events stop here, untouched.
    end = events.refuse_unless_expirable(
        op.cluster, op.hub, started, await load_extension(cluster, hub)
    )
    logger = get_run_logger()
    helm = op.cluster.provider is not Provider.local
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    url = events.export_url(op.cluster, op.hub, str(data_dir() / "exports"), stamp)
    spec = events.event_spec(op.cluster, op.hub)
    creds = spec.export.credentials if spec.export else None

    async def lower_placeholders(dry: bool) -> str | None:
        if not helm:
            return None
        return await set_placeholders(op.fleet, op.cluster, op.operator, dry, exclude=hub)

    homes = await _homes(op)
    if homes is None:
        logger.info("%s: already removed; nothing to expire", op.target)
        placeholders = await lower_placeholders(dry_run)
        await _cleanup_schedule(cluster, hub, dry_run)
        return {"hub": op.target, "expired": False, "reason": "already removed"} | (
            {"placeholders": placeholders} if helm else {}
        )
    listed = ", ".join(homes) or "none"
    data = (
        f"export {len(homes)} home(s) ({listed}) to {url}"
        + (" with a Job (user servers stopped first)" if helm else "")
        + " and verify"
        if url
        else f"delete {len(homes)} home(s) ({listed}) (data_policy: delete)"
    )
    removal = (
        f"teardown_hub (keep_data=false): revoke the ops token, helm uninstall {hub} -n {hub}, "
        f"delete namespace {hub}; lower the cluster's placeholders"
        if helm
        else "teardown_hub (keep_data=false): revoke the ops token, stop the hub, delete its state"
    )
    plan = f"health snapshot; {data}; {removal}"
    logger.info("%s (ended %s): %s", op.target, end.isoformat(), plan)
    if dry_run:
        placeholders = await lower_placeholders(True)
        await acreate_markdown_artifact(
            key=f"event-expire-{cluster}-{hub}",
            markdown=f"# Dry run: expire {op.target}\n\nWould: {plan}.\n\n"
            + (f"Pre-warm: {placeholders}.\n" if placeholders else ""),
            description=f"dry run: expire {op.target}",
        )
        return {"hub": op.target, "dry_run": True, "would": plan} | (
            {"placeholders": placeholders} if helm else {}
        )

    health = await check_hub_health(cluster, hub, operator=op.operator)
    exported: ExportResult | None = None
    exported_homes: list[str] = []
    await ensure_concurrency_limits_once(op.fleet)
    # One lock from the export to the removal: nobody deploys the hub in between. The
    # teardown subflow runs under it (locks pass down to subflows).
    async with hub_lock(cluster, hub):
        if url:  # a failed or unverified export raises here: the hub is left as it is
            exported, exported_homes = await export_hub_homes(op, url, creds, stamp, export_timeout)
        removed = await teardown_hub(cluster, hub, keep_data=False, operator=op.operator)
    placeholders = await lower_placeholders(False)
    cancelled = await _cleanup_schedule(cluster, hub, dry_run)
    rows = {
        "homes": ", ".join(exported_homes) or listed,
        "verified": "object count and sizes match" + (
            " the Job's listing; every volume listed" if helm else ""
        ) if exported else "-",
        "credentials": str(removed.get("revoked")) + "; ops token block deleted",
        "removed": str(removed.get("removed") or f"processes {removed.get('stopped') or 'none'} "
                       "stopped; state deleted"),
        **({"placeholders": str(placeholders)} if helm else {}),
    }  # fmt: skip
    return await _record_expiry(
        op, started, end, health, exported, rows, cancelled,
        {"homes": exported_homes or homes, "revoked": removed.get("revoked"),
         "removed": removed, **({"placeholders": placeholders} if helm else {})},
    )  # fmt: skip


async def _homes(op: Operation) -> list[str] | None:
    """The event hub's homes (local: users' directories; Kubernetes: home claims), or None
    when the hub is already gone (no directory; no release and no namespace)."""
    assert op.hub is not None
    hub = op.hub.name
    if op.cluster.provider is Provider.local:
        local = local_hub(op.fleet, op.cluster.name, hub)
        if not local.directory.is_dir():
            return None
        return sorted(p.name for p in local.homes.iterdir()) if local.homes.is_dir() else []
    async with cluster_session(op.cluster.name) as session:
        release = await in_thread(session.helm.status, hub, hub)
        namespace = await in_thread(kube.namespace_exists, session.api, hub)
        if release is None and not namespace:
            return None
        if not namespace:
            return []
        return [v.claim for v in await in_thread(user_volumes, session.api, hub)]


async def _record_expiry(
    op: Operation,
    started: datetime,
    end: datetime,
    health: dict[str, Any],
    exported: ExportResult | None,
    rows: dict[str, str],
    cancelled: list[str],
    result: dict[str, Any],
) -> dict[str, Any]:
    """The expiry's artifact (what was exported where, what was removed) and its result;
    `rows` are the provider's own lines (local process or Helm release)."""
    own = "".join(f"| {name} | {value} |\n" for name, value in rows.items())
    await acreate_markdown_artifact(
        key=f"event-expire-{op.target.replace('/', '-')}",
        markdown=f"# Expired {op.target}\n\n| | |\n|---|---|\n"
        f"| event end | {end.isoformat()} |\n| health before | {health['verdict']} |\n"
        f"| exported | {exported.summary() if exported else 'nothing (data_policy: delete)'} |\n"
        f"{own}| cancelled runs | {len(cancelled)} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"expired {op.target}",
    )
    export = (
        {"url": exported.url, "objects": exported.objects, "bytes": exported.bytes}
        if exported
        else None
    )
    return {
        "hub": op.target,
        "expired": True,
        "started": started.isoformat(),
        "export": export,
        **result,
    }


async def _cleanup_schedule(cluster: str, hub: str, dry_run: bool) -> list[str]:
    """Cancel this hub's other scheduled runs and forget its extension (the event is over)."""
    me = flow_run.get_id()
    stale = [r for r in await scheduled_event_runs(cluster, hub) if r.id != me]
    if not dry_run:
        for run in stale:
            await cancel_run(run, "event hub expired")
        await Variable.aunset(_extension_var(cluster, hub))
    return [r.id for r in stale]


@flow(name="reap_expired_event_hubs", flow_run_name="reap_expired_event_hubs")
async def reap_expired_event_hubs(
    dry_run: bool = False, operator: str | None = None
) -> dict[str, Any]:
    """Hourly: expire event hubs past end + grace that still exist; report overdue creations;
    keep each Kubernetes cluster's placeholders at the sum over its warm events (an event
    that ended stops holding capacity before its expiry; a missed pre-warm is caught up)."""
    fleet, who, _revision = await begin_fleet("reap_expired_event_hubs", operator)
    now = _now()
    present = await _present(fleet)
    items = events.reap_plan(fleet, now, present, await _all_extensions(fleet))
    failed: list[str] = []
    outcome: dict[str, str] = {}
    for item in items:
        target = f"{item.cluster}/{item.hub}"
        if item.verdict is not events.Verdict.expire:
            outcome[target] = item.verdict.value
            continue
        try:
            await expire_event_hub(item.cluster, item.hub, dry_run=dry_run, operator=who)
            outcome[target] = "would expire" if dry_run else "expired"
        except Exception as exc:  # one hub's failure must not stop the others
            get_run_logger().error("expiring %s failed: %s", target, exc)
            outcome[target] = f"FAILED: {exc}"
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
            failed.append(f"placeholders of {cluster.name}")
    overdue = [f"{i.cluster}/{i.hub}" for i in items if i.verdict is events.Verdict.overdue_create]
    rows = "\n".join(
        f"| {i.cluster}/{i.hub} | {i.verdict.value} | {i.reason} | "
        f"{outcome[f'{i.cluster}/{i.hub}']} |"
        for i in items
    )
    await acreate_markdown_artifact(
        key="event-reaper",
        markdown=f"# {'Dry run: ' if dry_run else ''}event hub reaper\n\n"
        f"| hub | verdict | why | outcome |\n|---|---|---|---|\n{rows}\n\n"
        f"Overdue creations: {', '.join(overdue) or 'none'}\n\n"
        + "".join(f"- pre-warm {c}: {line}\n" for c, line in warmed.items()),
        description=f"reaper: {sum(1 for v in outcome.values() if v == 'expired')} expired, "
        f"{len(overdue)} overdue, {len(failed)} failed",
    )
    if failed:
        raise HubfleetError(f"reaper: {', '.join(failed)} failed; see the runs")
    return {"outcome": outcome, "overdue": overdue, "placeholders": warmed, "dry_run": dry_run}


@flow(name="sync_event_schedules", flow_run_name="sync_event_schedules")
async def sync_event_schedules(
    dry_run: bool = False, operator: str | None = None
) -> dict[str, Any]:
    """Make the scheduled runs match the fleet: new events scheduled, changed ones moved,
    removed ones cancelled."""
    fleet, who, _revision = await begin_fleet("sync_event_schedules", operator)
    now = _now()
    for cluster in fleet.clusters:  # a cloud event without an export target fails here, early
        for hub in cluster.hubs:
            if hub.kind is HubKind.event:
                events.export_url(cluster, hub, str(data_dir() / "exports"), "check")
    running = await _running(fleet)
    wanted = events.fleet_wanted_runs(fleet, now, await _all_extensions(fleet), running)
    plan = events.plan_schedule(wanted, await scheduled_event_runs())
    done = await _apply_schedule(plan, who, dry_run, "fleet changed (sync)")
    await acreate_markdown_artifact(
        key="event-sync",
        markdown=f"# {'Dry run: ' if dry_run else ''}event schedules\n\n{_bullets(done)}",
        description=f"event sync: {len(done['scheduled'])} scheduled, "
        f"{len(done['cancelled'])} cancelled",
    )
    return {"dry_run": dry_run, **done}
