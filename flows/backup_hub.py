"""backup_hub and backup_fleet: copy standing hubs' homes and hub databases, verify, keep N.

Runbook of one hub (`backup_hub`):
  1. under the hub's lock (no teardown, deploy or restore of the hub meanwhile), copy the
     homes and the hub database to `<backup.url>/<cluster>/<hub>/<time>/` (local: files and
     a consistent sqlite snapshot; Kubernetes: the event export's rclone Job, read-only
     mounts, user servers keep running)
  2. verify: list the destination, every file with its size (tasks/backup.py); only then
     write the copy's manifest. A copy that does not verify fails the run; nothing older is
     deleted.
  3. retention: keep the newest `backup.keep` verified copies, delete the rest (and older
     incomplete copies)
  4. record the copy in an artifact

`backup_fleet` (scheduled: `schedules.backup` in fleet.yaml) runs `backup_hub` for every
standing hub, one after another; one hub that fails does not stop the others, and the run
fails at the end naming them. A dry run lists what would be copied and pruned; it changes
nothing and takes no lock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.operation import HubOperation, begin_fleet, begin_hub
from flows.parameters import ExportTimeout, LockWait, Selection
from hubfleet.model import HubKind, Provider
from hubfleet.paths import data_dir
from hubfleet.results import FleetBackedUp, HubBackedUp
from tasks import kube
from tasks.backup import (
    BackupFailed,
    backup_base,
    backup_credentials,
    backup_kube_hub,
    backup_local_hub,
    hub_url,
    list_copies,
    prune_copies,
    to_prune,
)
from tasks.cluster_session import cluster_session
from tasks.helm import in_thread
from tasks.kube_export import user_volumes
from tasks.local_hub import local_hub
from tasks.locks import ensure_concurrency_limits_once, hub_lock


def backup_location(op: HubOperation) -> tuple[str, str | None]:
    """(url of the hub's copies, credentials block name) from fleet.yaml `backup:`."""
    policy = op.fleet.settings.backup
    base = backup_base(op.cluster, policy, data_dir() / "backups")
    return hub_url(base, op.cluster.name, op.hub.name), policy.credentials


async def _homes(op: HubOperation) -> list[str] | None:
    """The hub's homes (users, or claims), or None when the hub is not deployed."""
    if op.cluster.provider is Provider.local:
        local = local_hub(op.fleet, op.cluster.name, op.hub.name)
        if not local.directory.is_dir():
            return None
        return sorted(p.name for p in local.homes.iterdir()) if local.homes.is_dir() else []
    async with cluster_session(op.cluster.name) as session:
        if not await in_thread(kube.namespace_exists, session.api, op.hub.name):
            return None
        return [v.claim for v in await in_thread(user_volumes, session.api, op.hub.name)]


@flow(name="backup_hub", flow_run_name="backup_hub {cluster}/{hub}")
async def backup_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    operator: str | None = None,
    lock_timeout: LockWait = None,
    backup_timeout: ExportTimeout = 3600.0,
) -> HubBackedUp:
    """Back up a hub's homes and hub database to the fleet's backup target, verify the
    copy, then keep the newest `backup.keep` verified copies.

    lock_timeout: seconds to wait for another operation on this hub (None: 1800).
    backup_timeout: seconds the copy (on Kubernetes: each Job) may take.
    """
    op = await begin_hub("backup_hub", cluster, hub, operator)
    logger = get_run_logger()
    url, creds = backup_location(op)
    keep = op.fleet.settings.backup.keep
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    homes = await _homes(op)
    if homes is None:
        logger.info("%s: not deployed; nothing to back up", op.target)
        return HubBackedUp(hub=op.target, backed_up=False, reason="not deployed", dry_run=dry_run)
    block = await backup_credentials(creds, url)
    verified, incomplete = await in_thread(list_copies, url, block)
    while stamp in incomplete or any(c.stamp == stamp for c in verified):
        await asyncio.sleep(1)  # a copy per second at most: its name is its time
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    helm = op.cluster.provider is not Provider.local
    how = " with a Job (read-only mounts)" if helm else ""
    would_prune = to_prune([c.stamp for c in verified] + [stamp], list(incomplete), keep)
    plan = (
        f"copy {len(homes)} home(s) ({', '.join(homes) or 'none'}) and the hub database "
        f"to {url}/{stamp}{how}; verify every file's size and the count; then keep the "
        f"newest {keep} verified copies (delete: {', '.join(would_prune) or 'none'})"
    )
    logger.info("%s: %s", op.target, plan)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"backup-{cluster}-{hub}",
            markdown=f"# Dry run: backup {op.target}\n\nWould {plan}.\n",
            description=f"dry run: backup {op.target}",
        )
        return HubBackedUp(hub=op.target, backed_up=False, dry_run=True, would=plan)

    await ensure_concurrency_limits_once(op.fleet)
    # Under the hub lock: a teardown (or a restore) cannot run while the copy is made.
    async with hub_lock(cluster, hub, timeout=lock_timeout):
        if helm:
            async with cluster_session(cluster) as session:
                copy = await backup_kube_hub(session.api, hub, url, stamp, creds, backup_timeout)
        else:
            local = local_hub(op.fleet, cluster, hub)
            db = local.directory / "jupyterhub.sqlite"
            copy = await backup_local_hub(local.homes, db, url, stamp, creds)
    # Only now, with the new copy verified, may older ones go.
    pruned = await prune_copies(url, creds, keep)
    await acreate_markdown_artifact(
        key=f"backup-{cluster}-{hub}",
        markdown=f"# Backed up {op.target}\n\n| | |\n|---|---|\n"
        f"| copy | {copy.url} |\n| homes | {', '.join(copy.users) or 'none'} |\n"
        f"| hub database | {', '.join(copy.db) or 'none'} |\n"
        f"| verified | {len(copy.files)} object(s), {copy.bytes} bytes: count and sizes match |\n"
        f"| retention | keep {keep}; deleted {', '.join(pruned) or 'none'} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"backup {op.target}",
    )
    return HubBackedUp(
        hub=op.target,
        backed_up=True,
        url=copy.url,
        stamp=copy.stamp,
        users=copy.users,
        db=copy.db,
        objects=len(copy.files),
        bytes=copy.bytes,
        pruned=pruned,
    )


@flow(name="backup_fleet", flow_run_name="backup_fleet")
async def backup_fleet(
    dry_run: bool = False,
    operator: str | None = None,
    only: Selection = None,
    lock_timeout: LockWait = None,
    backup_timeout: ExportTimeout = 3600.0,
) -> FleetBackedUp:
    """Back up every standing hub (`backup_hub` each, one after another); fail at the end
    if any hub's backup failed, naming it.

    only: cluster or cluster/hub names to back up (default: every standing hub).
    lock_timeout: seconds to wait for each hub's lock (None: 1800); a hub still busy then
    fails (named at the end), the others go on.
    """
    run = await begin_fleet("backup_fleet", operator)
    fleet, who = run.fleet, run.operator
    logger = get_run_logger()
    known = {c.name for c in fleet.clusters} | {
        f"{c.name}/{h.name}" for c in fleet.clusters for h in c.hubs
    }
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise LookupError(
            f"backup_fleet: {', '.join(unknown)} is not a cluster or cluster/hub of the fleet "
            f"(clusters: {', '.join(sorted(c.name for c in fleet.clusters))}). Nothing was run."
        )
    targets = [
        (c.name, h.name)
        for c in fleet.clusters
        for h in c.hubs
        if h.kind is HubKind.standing
        and (not only or c.name in only or f"{c.name}/{h.name}" in only)
    ]
    results: dict[str, HubBackedUp] = {}
    failed: dict[str, str] = {}
    for cluster, hub in targets:
        try:
            results[f"{cluster}/{hub}"] = await backup_hub(
                cluster,
                hub,
                dry_run=dry_run,
                operator=who,
                lock_timeout=lock_timeout,
                backup_timeout=backup_timeout,
            )
        except Exception as exc:  # one hub's failure does not stop the others
            failed[f"{cluster}/{hub}"] = f"{type(exc).__name__}: {exc}"[:500]
            logger.error("%s/%s: backup failed: %s", cluster, hub, failed[f"{cluster}/{hub}"])
    rows = "".join(
        f"| {name} | {r.stamp or r.reason or 'dry run'} | "
        f"{r.objects if r.backed_up else '-'} | {', '.join(r.pruned) or '-'} |\n"
        for name, r in results.items()
    ) + "".join(f"| {name} | FAILED: {why} | - | - |\n" for name, why in failed.items())
    await acreate_markdown_artifact(
        key="backup-fleet",
        markdown=f"# Fleet backup{' (dry run)' if dry_run else ''}\n\n"
        f"| hub | copy | objects | pruned |\n|---|---|---|---|\n{rows}",
        description="fleet backup",
    )
    if failed:
        raise BackupFailed(
            f"{len(failed)} of {len(targets)} hub backup(s) failed ({', '.join(failed)}); "
            "their earlier copies were kept. See each backup_hub run."
        )
    return FleetBackedUp(hubs=results, failed=failed)
