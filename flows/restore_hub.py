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

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import Field

from flows.backup_hub import backup_location
from flows.operation import begin_hub
from flows.parameters import ExportTimeout, LockWait, Name
from hubfleet.model import Provider
from tasks.backup import (
    BackupCopy,
    RestoreRefused,
    backup_credentials,
    list_copies,
    restore_kube_homes,
    restore_local_homes,
    restore_plan,
)
from tasks.cluster_session import cluster_session
from tasks.helm import in_thread
from tasks.kube_export import user_volumes
from tasks.local_hub import local_hub
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
) -> dict[str, Any]:
    """Restore a hub's homes (one user, or all) from its newest (or a named) verified backup.

    user: restore only this user's home (default: every home in the copy).
    stamp: which copy, by its time; default the newest verified one.
    lock_timeout: seconds to wait for another operation on this hub (None: 1800).
    restore_timeout: seconds the restore Job may take (Kubernetes).
    """
    op = await begin_hub("restore_hub", cluster, hub, operator)
    logger = get_run_logger()
    url, creds = backup_location(op)
    block = await backup_credentials(creds, url)
    copies, _ = await in_thread(list_copies, url, block)
    copy = choose_copy(copies, stamp, op.target, url)
    users = choose_users(copy, user, op.target)
    helm = op.cluster.provider is not Provider.local
    rows: list[dict[str, Any]]
    if helm:
        async with cluster_session(cluster) as session:
            volumes = await in_thread(user_volumes, session.api, hub)
        by_user = {v.user: v for v in volumes}
        lacking = [u for u in users if u not in by_user]
        if lacking:
            raise RestoreRefused(
                f"{op.target}: no home volume (claim-<user>) for {', '.join(lacking)} in "
                f"namespace {hub}; the user's first server start creates it, then re-run. "
                "Nothing was changed."
            )
        rows = [
            {"user": u, "files": len(copy.user_files(u)), "bytes": sum(copy.user_files(u).values())}
            for u in users
        ]
        where = f"their volumes ({', '.join(by_user[u].claim for u in users)}) with a Job, "
        where += "after stopping their servers"
    else:
        local = local_hub(op.fleet, cluster, hub)
        if not local.directory.is_dir():
            raise RestoreRefused(
                f"{op.target}: the hub is not deployed here; deploy it first "
                f"(hubfleet deploy {cluster} {hub}), then restore. Nothing was changed."
            )
        rows = restore_plan(copy, users, local.homes)
        where = f"{local.homes}/<user>"
    detail = "; ".join(
        f"{r['user']}: {r['files']} file(s), {r['bytes']} bytes"
        + (f", {len(r['missing_now'])} missing now" if r.get("missing_now") else "")
        + (f", {len(r['differ_now'])} differ now" if r.get("differ_now") else "")
        for r in rows
    )
    plan = (
        f"restore {len(users)} home(s) from {copy.url} into {where} ({detail or 'nothing'}); "
        "files created since the copy are kept"
    )
    logger.info("%s: %s", op.target, plan)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"restore-{cluster}-{hub}",
            markdown=f"# Dry run: restore {op.target}\n\nWould {plan}.\n",
            description=f"dry run: restore {op.target}",
        )
        return {"hub": op.target, "dry_run": True, "copy": copy.stamp, "would": plan, "plan": rows}

    await ensure_concurrency_limits_once(op.fleet)
    restored = [r["user"] for r in rows if r["files"]]
    stopped: list[str] = []
    async with hub_lock(cluster, hub, timeout=lock_timeout):
        if helm and restored:
            async with cluster_session(cluster) as session:
                vols = [by_user[u] for u in restored]
                stopped, how = await restore_kube_homes(
                    session.api, hub, copy, vols, creds, restore_timeout
                )
            logger.info("%s", how)
            files = sum(r["files"] for r in rows)
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
    return {
        "hub": op.target,
        "dry_run": False,
        "copy": copy.stamp,
        "users": restored,
        "files": files,
        "stopped": stopped,
    }
