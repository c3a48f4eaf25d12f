"""teardown_hub: remove a hub for good, keeping its users' homes unless told to drop them.

Runbook (both providers, under the hub's lock):
  1. keep the homes: an event hub with an `export:` destination has them exported and
     verified (the event-expiry export: an in-cluster Job on Kubernetes); any other hub
     keeps them where they are (Kubernetes: each home volume set to Retain and labelled
     with hub, cluster, user and time, so it outlives the namespace; local: the hub's
     directory moved under `<data dir>/archive/<cluster>`). `keep_data=False` drops them
     instead (home volumes set to Delete; the local directory deleted).
  2. revoke the ops token, through the hub's own API (port-forward or domain)
  3. remove the hub: `helm uninstall` and the namespace deleted (waited for); local: its
     processes stopped
  4. delete the hub's `HubOpsToken` block; record what went where in an artifact

A dry run reads the cluster and says all of it; it changes nothing and takes no lock.
Event expiry (flows/event_hubs/) exports first, then calls this with keep_data=False,
under the hub lock it already holds (locks pass down to subflows: tasks/locks.py).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from blocks.hub_token import HubOpsToken
from flows.operation import HubOperation, begin_hub
from flows.parameters import ExportTimeout, LockWait
from hubfleet import events
from hubfleet.model import HubKind, Provider
from hubfleet.paths import data_dir
from hubfleet.results import HubTornDown
from tasks import helm as helm_tasks
from tasks import kube
from tasks.cluster_session import hub_session
from tasks.export import ExportResult, export_homes
from tasks.helm import in_thread
from tasks.hub_access import hub_endpoint
from tasks.hub_credentials import delete_ops_token_block, load_ops_token, revoke_ops_token
from tasks.kube_archive import (
    archive_home_volumes,
    drop_home_volumes,
    home_volumes,
    volumes_left,
)
from tasks.kube_export import export_homes_with_job
from tasks.local_hub import local_hub, remove_local_hub
from tasks.locks import ensure_concurrency_limits_once, hub_lock

#: How long a dropped home volume may take to be deleted by its storage backend before
#: the teardown reports it as left behind.
DROP_WAIT_S = 60.0


def export_target(op: HubOperation, stamp: str) -> tuple[str, str | None] | None:
    """(url, credentials block) where the hub's homes are exported when they are kept:
    only an event hub with an `export:` destination (and data_policy export) has one."""
    if op.hub.kind is not HubKind.event or op.hub.event is None or op.hub.event.export is None:
        return None
    url = events.export_url(op.cluster, op.hub, str(data_dir() / "exports"), stamp)
    return (url, op.hub.event.export.credentials) if url else None


async def export_hub_homes(
    op: HubOperation, url: str, credentials: str | None, stamp: str, timeout: float
) -> tuple[ExportResult, list[str]]:
    """Export the hub's homes to `url` and verify the copy (the one export path of event
    expiry and teardown). Returns the result and the homes exported (claims or users).

    Changes: objects under `url`; on Kubernetes, user servers stopped and a Job and its
    Secret created and deleted in the hub's namespace. Raises `ExportFailed` otherwise,
    before anything is removed.
    """
    if op.cluster.provider is Provider.local:
        local = local_hub(op.fleet, op.cluster.name, op.hub.name)
        users = sorted(p.name for p in local.homes.iterdir()) if local.homes.is_dir() else []
        return await export_homes(local.homes, url, credentials), users
    async with hub_session(op.cluster.name, op.hub.name) as session:
        result, volumes = await export_homes_with_job(
            session.api, op.hub.name, url, credentials, stamp, timeout
        )
    return result, [v.claim for v in volumes]


@flow(name="teardown_hub", flow_run_name="teardown_hub {cluster}/{hub}")
async def teardown_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    keep_data: bool = True,
    operator: str | None = None,
    lock_timeout: LockWait = None,
    export_timeout: ExportTimeout = 3600.0,
) -> HubTornDown:
    """Remove a hub; keep its users' homes (exported or archived), or drop them with
    keep_data=false.

    lock_timeout: seconds to wait for another operation on this hub (None: 1800); then
    stop, naming the run that holds it, with nothing changed.
    export_timeout: seconds an export of the homes may take before the teardown fails
    (and the hub stays).
    """
    op = await begin_hub("teardown_hub", cluster, hub, operator)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    export = export_target(op, stamp) if keep_data else None
    if op.cluster.provider is Provider.local:
        plan, do = _local(op, keep_data, export, export_timeout, stamp)
    else:
        plan, do = await _helm(op, keep_data, export, export_timeout, stamp)
    what = "; ".join([*plan, f"delete the block {HubOpsToken.block_name(cluster, hub)}"])
    get_run_logger().info("%s: %s", op.target, what)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"teardown-{cluster}-{hub}",
            markdown=f"# Dry run: teardown {op.target}\n\nWould {what}.\n",
            description=f"dry run: teardown {op.target}",
        )
        return HubTornDown(hub=op.target, dry_run=True, would=what)

    await ensure_concurrency_limits_once(op.fleet)
    async with hub_lock(cluster, hub, timeout=lock_timeout):
        result = await do()
    done = result.model_dump(exclude_defaults=True, exclude={"hub"})
    rows = "".join(f"| {k} | {v} |\n" for k, v in done.items())
    await acreate_markdown_artifact(
        key=f"teardown-{cluster}-{hub}",
        markdown=f"# Torn down {op.target}\n\n| | |\n|---|---|\n{rows}"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"teardown {op.target}",
    )
    return result


async def _revoke(op: HubOperation) -> str:
    """Revoke the ops token where the hub answers now. A hub that cannot be reached (no
    Ready proxy pod to forward to) is reported, its database goes with it; a token that
    still works after its revocation is an error."""
    cluster, hub = op.cluster.name, op.hub.name
    if await load_ops_token(cluster, hub) is None:
        return "no ops token stored"
    stack = AsyncExitStack()
    try:
        url = await stack.enter_async_context(hub_endpoint(op.fleet, cluster, hub))
    except Exception as exc:
        await stack.aclose()
        get_run_logger().warning("%s: cannot reach the hub to revoke: %s", op.target, exc)
        return f"hub unreachable ({type(exc).__name__}); its database (and the token) removed"
    async with stack:
        return await revoke_ops_token(cluster, hub, url)


def _local(
    op: HubOperation,
    keep_data: bool,
    export: tuple[str, str | None] | None,
    export_timeout: float,
    stamp: str,
) -> tuple[list[str], Any]:
    cluster, hub = op.cluster.name, op.hub.name
    local = local_hub(op.fleet, cluster, hub)
    pids = local.pids()
    archive_root = data_dir() / "archive" / cluster if keep_data and not export else None
    plan = [
        f"export {local.homes} to {export[0]} and verify" if export else "",
        "revoke the ops token",
        f"stop processes {pids or 'none running'}",
        f"archive {local.directory} under {archive_root}"
        if archive_root
        else f"delete {local.directory}",
    ]

    async def do() -> HubTornDown:
        exported = None
        if export:  # a failed or unverified export raises here: the hub stays
            exported, _ = await export_hub_homes(op, *export, stamp, export_timeout)
        revoked = await _revoke(op)
        stopped = local.pids()
        archived = remove_local_hub(local, archive_root)
        await delete_ops_token_block(cluster, hub)
        return HubTornDown(
            hub=op.target,
            export=exported.summary() if exported else None,
            stopped=stopped,
            archived=str(archived) if archived else None,
            revoked=revoked,
        )

    return [p for p in plan if p], do


async def _helm(
    op: HubOperation,
    keep_data: bool,
    export: tuple[str, str | None] | None,
    export_timeout: float,
    stamp: str,
) -> tuple[list[str], Any]:
    cluster, hub = op.cluster.name, op.hub.name
    async with hub_session(cluster, hub) as session:
        release = await in_thread(session.helm.status, hub, hub)
        namespace = await in_thread(kube.namespace_exists, session.api, hub)
        homes = await in_thread(home_volumes, session.api, hub) if namespace else []
    listed = ", ".join(f"{h.claim} ({h.volume or 'unbound'})" for h in homes) or "none"
    if not keep_data:
        data = f"drop {len(homes)} home volume(s) ({listed}): reclaim policy Delete"
    elif export:
        data = (
            f"stop user servers; export {len(homes)} home volume(s) ({listed}) to "
            f"{export[0]} with a Job and verify"
        )
    else:
        data = (
            f"archive {len(homes)} home volume(s) ({listed}) in the cluster: reclaim policy "
            "Retain, labelled with hub, cluster, user and time"
        )
    plan = [
        data,
        "revoke the ops token",
        f"helm uninstall {hub} -n {hub}" if release else "no release to uninstall",
        f"delete namespace {hub} and wait until it is gone" if namespace else "no namespace",
    ]

    async def do() -> HubTornDown:
        async with hub_session(cluster, hub) as session:
            helm, api = session.helm, session.api
            # Read again under the lock: a user may have started a server since the plan.
            now = await in_thread(home_volumes, api, hub) if namespace else []
            exported, kept, dropped = None, [], []
            if export and now:  # a failed or unverified export raises here: the hub stays
                exported, _ = await export_hub_homes(op, *export, stamp, export_timeout)
            elif keep_data:
                kept = await archive_home_volumes(api, cluster, hub, now, datetime.now(UTC))
            else:
                dropped = await drop_home_volumes(api, hub, now)
            revoked = await _revoke(op)
            if await in_thread(helm.status, hub, hub) is not None:
                await helm_tasks.helm_uninstall(helm, hub, hub)
            await kube.remove_namespace(api, hub)
            await delete_ops_token_block(cluster, hub)
            left = await _wait_dropped(api, dropped)
        return HubTornDown(
            hub=op.target,
            export=exported.summary() if exported else None,
            homes=[h.claim for h in now],
            archived_volumes=kept,
            dropped_volumes=dropped,
            volumes_left=left,
            revoked=revoked,
            removed=f"release {hub} uninstalled; namespace {hub} deleted",
        )

    return plan, do


async def _wait_dropped(api: Any, names: list[str]) -> dict[str, str]:
    """Wait (at most DROP_WAIT_S) for dropped volumes to be deleted by their backend;
    those left (e.g. `Failed`: the backend could not delete them) are returned and
    logged with why, so nobody believes data is gone that is not."""
    deadline = asyncio.get_running_loop().time() + DROP_WAIT_S
    left = await in_thread(volumes_left, api, names)
    while left and asyncio.get_running_loop().time() < deadline:
        if all(why.startswith("Failed") for why in left.values()):
            break
        await asyncio.sleep(1)
        left = await in_thread(volumes_left, api, names)
    for name, why in left.items():
        get_run_logger().warning(
            "home volume %s was not deleted by its storage backend (%s); delete its storage "
            "by hand (kubectl get pv %s)",
            name,
            why,
            name,
        )
    return left
