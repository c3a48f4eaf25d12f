"""restore_hub: bring a hub's homes back from a verified backup (one user, or all).

Runbook:
  1. find the copy: the newest verified copy of the hub at the fleet's backup target, or
     the one named (`stamp`); only copies whose manifest exists (verified) are used
  2. plan, per user: files and bytes in the copy, which are missing or differ now
  3. under the hub's lock: local, write the files back into the user's home (owned as
     the home is); Kubernetes, stop the server of each user restored, then the export's
     rclone Job with their PVCs mounted read-write copies their homes back
  4. record what was restored in an artifact

Files in the copy are written back; files created since the copy are left alone, so a
restore never deletes work. The hub database is not restored by this flow (it is in the
copy, `hub-db/`, for disaster recovery by hand: README "Backups and restore").
A dry run says all of the above and changes nothing; it takes no lock.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import Field

from flows.backup_hub import backup_location
from flows.operation import HubOperation, begin_hub
from flows.parameters import ExportTimeout, LockWait, Name
from hubfleet.model import Provider
from hubfleet.results import HubRestored, RestoreRow
from tasks.backup import (
    BackupCopy,
    RestoreRefused,
    backup_credentials,
    list_copies,
    restore_kube_homes,
    restore_local_homes,
    restore_plan,
)
from tasks.cluster_session import hub_session
from tasks.helm import in_thread
from tasks.kube_export import UserVolume, user_volumes
from tasks.local_hub import LocalHub, local_hub
from tasks.locks import ensure_concurrency_limits_once, hub_lock

#: A copy's name: the UTC time it was started.
Stamp = Annotated[
    str | None,
    Field(
        pattern=r"^\d{8}T\d{6}Z$",
        description="Which copy, by its time (e.g. 20270315T010000Z); default: the newest "
        "verified copy.",
    ),
]


def choose_copy(copies: list[BackupCopy], stamp: str | None, target: str, url: str) -> BackupCopy:
    """The copy named `stamp`, else the newest; `RestoreRefused` saying what exists."""
    if not copies:
        raise RestoreRefused(
            f"{target}: no verified backup at {url}; run `hubfleet backup` first. "
            "Nothing was changed."
        )
    if stamp is None:
        return copies[-1]
    for copy in copies:
        if copy.stamp == stamp:
            return copy
    known = ", ".join(c.stamp for c in copies)
    raise RestoreRefused(
        f"{target}: no verified copy {stamp!r} at {url} (verified copies: {known}). "
        "Nothing was changed."
    )


def choose_users(copy: BackupCopy, user: str | None, target: str) -> list[str]:
    if user is None:
        return copy.users
    if user not in copy.users:
        raise RestoreRefused(
            f"{target}: the copy {copy.stamp} has no home of {user!r} (homes: "
            f"{', '.join(copy.users) or 'none'}). Nothing was changed."
        )
    return [user]


async def _home_volumes(op: HubOperation, users: list[str]) -> dict[str, UserVolume]:
    """The users' home volumes (claim-<user>) by user; refused if one is missing."""
    async with hub_session(op.cluster.name, op.hub.name) as session:
        volumes = await in_thread(user_volumes, session.api, op.hub.name)
    by_user = {v.user: v for v in volumes}
    lacking = [u for u in users if u not in by_user]
    if lacking:
        raise RestoreRefused(
            f"{op.target}: no home volume (claim-<user>) for {', '.join(lacking)} in "
            f"namespace {op.hub.name}; the user's first server start creates it, then re-run. "
            "Nothing was changed."
        )
    return by_user


def _deployed_local_hub(op: HubOperation) -> LocalHub:
    """The local hub, refused if it is not deployed here."""
    local = local_hub(op.fleet, op.cluster.name, op.hub.name)
    if not local.directory.is_dir():
        raise RestoreRefused(
            f"{op.target}: the hub is not deployed here; deploy it first (hubfleet deploy "
            f"{op.cluster.name} {op.hub.name}), then restore. Nothing was changed."
        )
    return local


@flow(name="restore_hub", flow_run_name="restore_hub {cluster}/{hub}")
async def restore_hub(
    cluster: str,
    hub: str,
    user: Name | None = None,
    stamp: Stamp = None,
    dry_run: bool = False,
    operator: str | None = None,
    lock_timeout: LockWait = None,
    restore_timeout: ExportTimeout = 3600.0,
) -> HubRestored:
    """Restore a hub's homes (one user, or all) from its newest (or a named) verified backup.

    user: restore only this user's home (default: every home in the copy).
    stamp: which copy, by its time; default the newest verified one.
    lock_timeout: seconds to wait for another operation on this hub (None: 1800).
    restore_timeout: seconds the restore Job may take (Kubernetes).
    """
    op = await begin_hub("restore_hub", cluster, hub, operator)
    logger = get_run_logger()
    # 1. Which copy, and whose homes (refused with nothing changed if either is missing).
    url, creds = backup_location(op)
    block = await backup_credentials(creds, url)
    copies, _ = await in_thread(list_copies, url, block)
    copy = choose_copy(copies, stamp, op.target, url)
    users = choose_users(copy, user, op.target)
    # 2. The plan: per user, the files the copy holds (locally: and what differs now).
    helm = op.cluster.provider is not Provider.local
    rows: list[RestoreRow]
    if helm:
        by_user = await _home_volumes(op, users)
        rows = [
            RestoreRow(
                user=u, files=len(copy.user_files(u)), bytes=sum(copy.user_files(u).values())
            )
            for u in users
        ]
        where = f"their volumes ({', '.join(by_user[u].claim for u in users)}) with a Job, "
        where += "after stopping their servers"
    else:
        local = _deployed_local_hub(op)
        rows = restore_plan(copy, users, local.homes)
        where = f"{local.homes}/<user>"
    detail = "; ".join(
        f"{r.user}: {r.files} file(s), {r.bytes} bytes"
        + (f", {len(r.missing_now)} missing now" if r.missing_now else "")
        + (f", {len(r.differ_now)} differ now" if r.differ_now else "")
        for r in rows
    )
    plan = (
        f"restore {len(users)} home(s) from {copy.url} into {where} ({detail or 'nothing'}); "
        "files created since the copy are kept"
    )
    logger.info("%s: %s", op.target, plan)
    # 3. A dry run stops here.
    if dry_run:
        await acreate_markdown_artifact(
            key=f"restore-{cluster}-{hub}",
            markdown=f"# Dry run: restore {op.target}\n\nWould {plan}.\n",
            description=f"dry run: restore {op.target}",
        )
        return HubRestored(hub=op.target, stamp=copy.stamp, dry_run=True, would=plan, plan=rows)

    # 4. Write the homes back, under the hub lock; 5. the record.
    await ensure_concurrency_limits_once(op.fleet)
    restored = [r.user for r in rows if r.files]
    stopped: list[str] = []
    async with hub_lock(cluster, hub, timeout=lock_timeout):
        if helm and restored:
            async with hub_session(cluster, hub) as session:
                vols = [by_user[u] for u in restored]
                stopped, how = await restore_kube_homes(
                    session.api, hub, copy, vols, creds, restore_timeout
                )
            logger.info("%s", how)
            files = sum(r.files for r in rows)
        elif restored:
            files = await restore_local_homes(copy, restored, local.homes, creds)
        else:
            files = 0
    await acreate_markdown_artifact(
        key=f"restore-{cluster}-{hub}",
        markdown=f"# Restored {op.target}\n\n| | |\n|---|---|\n"
        f"| copy | {copy.url} |\n| homes | {', '.join(restored) or 'none'} |\n"
        f"| files | {files} |\n| servers stopped | {', '.join(stopped) or 'none'} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"restore {op.target}",
    )
    return HubRestored(
        hub=op.target, stamp=copy.stamp, users=restored, files=files, stopped=stopped
    )
