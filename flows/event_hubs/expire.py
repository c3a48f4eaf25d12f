"""`expire_event_hub`: health snapshot, export and verify, then `teardown_hub(keep_data=False)`.

On every provider, all under one hub lock, so there is one way a hub is removed: the export
(`teardown_hub.export_hub_homes`: files on `local`, an in-cluster Job on Kubernetes), then the
teardown; then the cluster's placeholders are lowered and the hub's other scheduled runs
cancelled.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.runtime import flow_run
from prefect.variables import Variable

from flows.check_hub_health import check_hub_health
from flows.event_hubs.prewarm import set_placeholders
from flows.operation import HubOperation, begin_hub
from flows.parameters import ExportTimeout
from flows.teardown_hub import export_hub_homes, teardown_hub
from hubfleet import events
from hubfleet.model import Provider
from hubfleet.paths import data_dir
from hubfleet.results import EventHubExpired, Expiry, ExportSummary, HubHealth
from tasks import kube
from tasks.cluster_session import hub_session
from tasks.event_schedule import (
    cancel_run,
    extension_variable,
    load_extension,
    scheduled_event_runs,
    utc_now,
)
from tasks.export import ExportResult
from tasks.helm import in_thread
from tasks.kube_export import user_volumes
from tasks.local_hub import local_hub
from tasks.locks import ensure_concurrency_limits_once, hub_lock
from tasks.notify import mail_organizers


@flow(name="expire_event_hub", flow_run_name="expire_event_hub {cluster}/{hub}")
async def expire_event_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    operator: str | None = None,
    export_timeout: ExportTimeout = 3600.0,
) -> EventHubExpired:
    """Expire an event hub that is over: snapshot, export, remove (`teardown_hub` with
    keep_data=false), lower the placeholders, record.

    export_timeout: seconds the export of the homes may take before the expiry fails (and
    the hub stays).
    """
    started = utc_now()
    op = await begin_hub("expire_event_hub", cluster, hub, operator)
    # 1. The safety rule, first: standing hubs and unfinished events stop here, untouched.
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

    # 2. What is there: a hub already removed only has its leftovers cleaned up.
    homes = await _homes(op)
    if homes is None:
        logger.info("%s: already removed; nothing to expire", op.target)
        placeholders = await lower_placeholders(dry_run)
        cancelled = await _cleanup_schedule(cluster, hub, dry_run)
        return EventHubExpired(
            hub=op.target,
            outcome=Expiry.already_removed,
            dry_run=dry_run,
            placeholders=placeholders,
            cancelled=cancelled,
        )
    # 3. The plan; a dry run stops here.
    listed = ", ".join(homes) or "none"
    plan = expiry_plan(hub, homes, url, helm)
    logger.info("%s (ended %s): %s", op.target, end.isoformat(), plan)
    if dry_run:
        placeholders = await lower_placeholders(True)
        await acreate_markdown_artifact(
            key=f"event-expire-{cluster}-{hub}",
            markdown=f"# Dry run: expire {op.target}\n\nWould: {plan}.\n\n"
            + (f"Pre-warm: {placeholders}.\n" if placeholders else ""),
            description=f"dry run: expire {op.target}",
        )
        return EventHubExpired(
            hub=op.target,
            outcome=Expiry.would_expire,
            dry_run=True,
            would=plan,
            homes=homes,
            placeholders=placeholders,
        )

    # 4. A health snapshot, for the record.
    health = await check_hub_health(cluster, hub, operator=op.operator)
    exported: ExportResult | None = None
    exported_homes: list[str] = []
    await ensure_concurrency_limits_once(op.fleet)
    # 5. Export (verified), then teardown_hub, under one lock from the export to the
    # removal: nobody deploys the hub in between (locks pass down to the teardown subflow).
    async with hub_lock(cluster, hub):
        if url:  # a failed or unverified export raises here: the hub is left as it is
            exported, exported_homes = await export_hub_homes(op, url, creds, stamp, export_timeout)
        removed = await teardown_hub(cluster, hub, keep_data=False, operator=op.operator)
    # 6. The cluster's capacity and the event's leftover scheduled runs.
    placeholders = await lower_placeholders(False)
    cancelled = await _cleanup_schedule(cluster, hub, dry_run)
    # 7. The record (an artifact), then the organizers' mail.
    rows = {
        "homes": ", ".join(exported_homes) or listed,
        "verified": "object count and sizes match" + (
            " the Job's listing; every volume listed" if helm else ""
        ) if exported else "-",
        "credentials": removed.revoked + "; ops token block deleted",
        "removed": str(removed.removed or f"processes {removed.stopped or 'none'} "
                       "stopped; state deleted"),
        **({"placeholders": str(placeholders)} if helm else {}),
    }  # fmt: skip
    await _record_expiry(op, end, health, exported, rows, cancelled)
    # Last, once the record is written: a mail server that fails now fails the run (someone
    # must tell the organizers), but the hub is gone and its data where the record says.
    mailed = await tell_organizers_expired(op, spec, exported)
    return EventHubExpired(
        hub=op.target,
        outcome=Expiry.expired,
        started=started,
        export=ExportSummary(url=exported.url, objects=exported.objects, bytes=exported.bytes)
        if exported
        else None,
        homes=exported_homes or homes,
        revoked=removed.revoked,
        removed=removed,
        placeholders=placeholders,
        cancelled=cancelled,
        mailed=mailed,
    )


def expiry_plan(hub: str, homes: list[str], url: str | None, helm: bool) -> str:
    """What the expiry will do, in words (the log, and a dry run's artifact)."""
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
    return f"health snapshot; {data}; {removal}"


async def tell_organizers_expired(
    op: HubOperation, spec: events.EventSpec, exported: ExportResult | None
) -> list[str]:
    """The expiry notice to the organizers: when the hub went, where their data went."""
    data = (
        f"The home directories were exported to {exported.url} ({exported.objects} files, "
        f"{exported.bytes} bytes, verified) and then deleted from the hub."
        if exported
        else "The home directories were deleted (data_policy: delete; nothing was exported)."
    )
    body = (
        f"The event hub {op.target} ({op.hub.domain}) was removed at "
        f"{events.local_time(utc_now(), spec.timezone)}.\n{data}\n"
    )
    subject = f"[hubfleet] {op.hub.domain} has expired"
    return await mail_organizers(op.fleet, spec.organizers, subject, body)


async def _homes(op: HubOperation) -> list[str] | None:
    """The event hub's homes (local: users' directories; Kubernetes: home claims), or None
    when the hub is already gone (no directory; no release and no namespace)."""
    hub = op.hub.name
    if op.cluster.provider is Provider.local:
        local = local_hub(op.fleet, op.cluster.name, hub)
        if not local.directory.is_dir():
            return None
        return sorted(p.name for p in local.homes.iterdir()) if local.homes.is_dir() else []
    async with hub_session(op.cluster.name, op.hub.name) as session:
        release = await in_thread(session.helm.status, hub, hub)
        namespace = await in_thread(kube.namespace_exists, session.api, hub)
        if release is None and not namespace:
            return None
        if not namespace:
            return []
        return [v.claim for v in await in_thread(user_volumes, session.api, hub)]


async def _record_expiry(
    op: HubOperation,
    end: datetime,
    health: HubHealth,
    exported: ExportResult | None,
    rows: dict[str, str],
    cancelled: list[str],
) -> None:
    """The expiry's artifact (what was exported where, what was removed); `rows` are the
    provider's own lines (local process or Helm release)."""
    own = "".join(f"| {name} | {value} |\n" for name, value in rows.items())
    await acreate_markdown_artifact(
        key=f"event-expire-{op.target.replace('/', '-')}",
        markdown=f"# Expired {op.target}\n\n| | |\n|---|---|\n"
        f"| event end | {end.isoformat()} |\n| health before | {health.verdict} |\n"
        f"| exported | {exported.summary() if exported else 'nothing (data_policy: delete)'} |\n"
        f"{own}| cancelled runs | {len(cancelled)} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"expired {op.target}",
    )


async def _cleanup_schedule(cluster: str, hub: str, dry_run: bool) -> list[str]:
    """Cancel this hub's other scheduled runs and forget its extension (the event is over)."""
    me = flow_run.get_id()
    stale = [r for r in await scheduled_event_runs(cluster, hub) if r.id != me]
    if not dry_run:
        for run in stale:
            await cancel_run(run, "event hub expired")
        await Variable.aunset(extension_variable(cluster, hub))
    return [r.id for r in stale]
