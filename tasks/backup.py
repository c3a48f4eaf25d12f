"""Back up a standing hub's homes and hub database, verify the copy, keep N, restore homes.

Where: the fleet's backup target (`backup:` in fleet.yaml, the export targets' kinds:
`file:///dir`, `s3://`, `az://`, `gs://`, written and listed with `tasks.export`'s clients).
Each copy is one prefix, `<url>/<cluster>/<hub>/<stamp>/`:

    homes/<user>/...             every regular file of every home (symlinks skipped)
    hub-db/...                   the hub database (local: a consistent sqlite copy made
                                 with sqlite3's backup API; Kubernetes: the hub-db-dir PVC)
    hubfleet-backup.json         the manifest: every object above with its size, written
                                 last, only once the copy verified

A copy is *verified* when its manifest exists: the destination was listed after the upload
and held every source file with its size. Retention (`backup.keep`) counts verified copies
only, and runs only after the new copy verified: a backup that fails verification fails
the run and deletes nothing (the copies before it stay; its own partial objects are
removed by the next successful backup). A restore reads verified copies only.

On Kubernetes nothing outside the cluster can read the PVCs, so the copy is the event
export's rclone Job (tasks/kube_export.py): one Job for the user PVCs, one for the hub's
`hub-db-dir` PVC, each mounting read-only and listing what it saw; the listing is proved
against the bucket with our own client. A restore is the same Job with the user PVCs
mounted read-write, copying `homes/<user>` back (rclone copy: files in the backup are
written back; files created since are left alone).

Credentials come from a block named in `backup.credentials` (as `event.export.credentials`)
and reach a Job only through its own Secret; never a parameter, a log line or the manifest.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from hubfleet.errors import HubfleetError
from hubfleet.model import BackupPolicy, Cluster, Provider
from hubfleet.results import RestoreRow
from tasks.export import (
    _S3,
    ExportFailed,
    _AzureBlob,
    _call,
    _Destination,
    _Directory,
    _Gcs,
    destination,
    load_credentials,
    source_files,
)
from tasks.kube import _call as kcall
from tasks.kube_export import (
    UserVolume,
    check_destination,
    credential_env,
    run_job,
    stop_user_servers,
    user_volumes,
    verify_bucket,
)

P = ParamSpec("P")
R = TypeVar("R")

MANIFEST = "hubfleet-backup.json"
HOMES = "homes"
HUB_DB = "hub-db"
#: The z2jh chart's PVC holding the hub's sqlite database (hub.db.type: sqlite-pvc).
HUB_DB_CLAIM = "hub-db-dir"
#: A copy's name: its UTC start, so names sort by time.
STAMP = re.compile(r"^\d{8}T\d{6}Z$")


class BackupFailed(HubfleetError):
    """A backup did not complete or did not verify; no earlier copy was deleted."""


class RestoreRefused(HubfleetError):
    """A restore cannot run as asked (no such copy or user); nothing was changed."""


@dataclass(frozen=True)
class BackupCopy:
    """One verified copy: where, when, and every object with its size."""

    url: str
    stamp: str
    files: dict[str, int]
    users: list[str]
    db: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(self.files.values())

    def summary(self) -> str:
        return (
            f"{len(self.users)} home(s), {len(self.files)} object(s), {self.bytes} bytes "
            f"at {self.url}"
        )

    def user_files(self, user: str) -> dict[str, int]:
        """The files of `user`'s home in this copy: path inside the home -> size."""
        prefix = f"{HOMES}/{user}/"
        return {k.removeprefix(prefix): v for k, v in self.files.items() if k.startswith(prefix)}


def reword(exc: ExportFailed, restore: bool = False) -> HubfleetError:
    """An export error, said as a backup's or a restore's (the hub is not being removed)."""
    what = "restore" if restore else "backup"
    text = str(exc).replace("export Job", f"{what} Job").replace("export to", f"{what} from")
    if not restore:
        text = text.replace("backup from", "backup to")
    text = re.sub(r";? ?the hub was not removed\.?", "", text)
    text = re.sub(r",? ?re-run the expiry\.?", "", text)
    if restore:
        return RestoreRefused(f"{text.rstrip('. ')}; fix the cause, then re-run the restore.")
    return BackupFailed(
        f"{text.rstrip('. ')}; the run failed and no earlier copy was deleted. "
        "Fix the cause, then re-run the backup."
    )


def _speaks_backup(restore: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Errors of the destination's clients (ExportFailed) said as a backup's (restore's)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ExportFailed as exc:
                raise reword(exc, restore) from None

        return inner

    return wrap


def hub_url(base: str, cluster: str, hub: str) -> str:
    """Where a hub's copies live: `<base>/<cluster>/<hub>`."""
    return f"{base.rstrip('/')}/{cluster}/{hub}"


def stamp_url(url: str, stamp: str) -> str:
    return f"{url.rstrip('/')}/{stamp}"


# --- what is at the destination, and what retention deletes ---------------------------


@_speaks_backup()
def list_copies(url: str, block: Any) -> tuple[list[BackupCopy], dict[str, list[str]]]:
    """The hub's verified copies (oldest first) and its incomplete ones (stamp -> objects)."""
    dest = _call(url, lambda: destination(url, block))
    listed: dict[str, int] = _call(url, dest.list)
    by_stamp: dict[str, list[str]] = {}
    for name in listed:
        stamp = name.split("/", 1)[0]
        if STAMP.match(stamp):
            by_stamp.setdefault(stamp, []).append(name)
    verified, incomplete = [], {}
    for stamp, names in sorted(by_stamp.items()):
        if f"{stamp}/{MANIFEST}" not in names:
            incomplete[stamp] = sorted(names)
            continue
        raw = _call(url, partial(dest.get_bytes, f"{stamp}/{MANIFEST}"))
        manifest = json.loads(raw or b"{}")
        verified.append(
            BackupCopy(
                stamp_url(url, stamp),
                stamp,
                {str(k): int(v) for k, v in manifest.get("files", {}).items()},
                list(manifest.get("users", [])),
                list(manifest.get("db", [])),
            )
        )
    return verified, incomplete


def to_prune(verified: list[str], incomplete: list[str], keep: int) -> list[str]:
    """The stamps retention deletes: verified copies beyond the newest `keep`, and
    incomplete copies older than the newest verified one (a failed run's leftovers; one
    newer than it may be a backup still running)."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    newest = sorted(verified, reverse=True)
    old = newest[keep:]
    stale = [s for s in incomplete if newest and s < newest[0]]
    return sorted(old + stale)


def delete_objects(url: str, block: Any, names: list[str]) -> None:
    """Delete the objects `names` under `url` (missing ones are fine)."""
    dest = _call(url, lambda: destination(url, block))
    for name in names:
        _call(url, partial(_delete, dest, name))
    if isinstance(dest, _Directory):  # no empty directories left behind
        for root, _dirs, _files in sorted(os.walk(dest.root), reverse=True):
            path = Path(root)
            if path != dest.root and not any(path.iterdir()):
                path.rmdir()


def _delete(dest: _Destination, name: str) -> None:
    if isinstance(dest, _Directory):
        (dest.root / name).unlink(missing_ok=True)
    elif isinstance(dest, _S3):
        dest.client.delete_object(Bucket=dest.bucket, Key=_key(dest.prefix, name))
    elif isinstance(dest, _AzureBlob):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            dest.container.delete_blob(_key(dest.prefix, name))
        except ResourceNotFoundError:
            pass
    elif isinstance(dest, _Gcs):
        blob = dest.bucket.blob(_key(dest.prefix, name))
        if blob.exists():
            blob.delete()
    else:
        raise BackupFailed(f"cannot delete from {type(dest).__name__}")


def _download(dest: _Destination, name: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(dest, _Directory):
        shutil.copyfile(dest.root / name, path)
    elif isinstance(dest, _S3):
        dest.client.download_file(dest.bucket, _key(dest.prefix, name), str(path))
    elif isinstance(dest, _AzureBlob):
        with path.open("wb") as out:
            dest.container.download_blob(_key(dest.prefix, name)).readinto(out)
    elif isinstance(dest, _Gcs):
        dest.bucket.blob(_key(dest.prefix, name)).download_to_filename(str(path))
    else:
        raise RestoreRefused(f"cannot read from {type(dest).__name__}")


def _refuse_links(home: Path, path: Path) -> None:
    """Never write through a link planted in a home (the restore may run as root): a
    file that is a link now is replaced; a directory on the way that is a link, or that
    leads out of the home, refuses the restore."""
    if path.is_symlink():
        path.unlink()
    real_home = os.path.realpath(home)
    here = home
    for part in path.relative_to(home).parts[:-1]:
        here = here / part
        if here.is_symlink() or not os.path.realpath(here).startswith(real_home + os.sep):
            raise RestoreRefused(
                f"{here} is a symbolic link (or leads out of the home {home}); the restore "
                f"would write through it. Remove or rename it, then re-run the restore. "
                "Files of this home restored so far stay."
            )


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


@_speaks_backup()
def prune(url: str, block: Any, keep: int) -> list[str]:
    """Apply retention to the hub's copies under `url`; returns the stamps deleted.
    Call only after a new copy verified."""
    verified, incomplete = list_copies(url, block)
    stamps = to_prune([c.stamp for c in verified], list(incomplete), keep)
    dest = _call(url, lambda: destination(url, block))
    listed: dict[str, int] = _call(url, dest.list)
    doomed = [n for n in listed if n.split("/", 1)[0] in stamps]
    # The manifest first: a copy half deleted is never taken for a verified one.
    doomed.sort(key=lambda n: (not n.endswith(f"/{MANIFEST}"), n))
    delete_objects(url, block, doomed)
    return stamps


# --- verification ---------------------------------------------------------------------


def verify_copy(url: str, files: dict[str, int], found: dict[str, int]) -> None:
    """Raise `BackupFailed` unless every source file is at the destination with its size."""
    missing = sorted(set(files) - set(found))
    wrong = sorted(n for n in files if n in found and found[n] != files[n])
    if missing or wrong:
        parts = [f"missing {len(missing)}: {', '.join(missing[:5])}"] if missing else []
        parts += [f"size differs for {len(wrong)}: {', '.join(wrong[:5])}"] if wrong else []
        raise BackupFailed(
            f"backup to {url} did not verify ({'; '.join(parts)}); the run failed and no "
            "earlier copy was deleted. Check the destination, then re-run the backup."
        )


def write_manifest(dest: _Destination, url: str, copy: BackupCopy, extra: dict[str, Any]) -> None:
    manifest = {
        "stamp": copy.stamp,
        "users": copy.users,
        "db": copy.db,
        "objects": len(copy.files),
        "bytes": copy.bytes,
        "files": copy.files,
        **extra,
    }
    _call(url, lambda: dest.put_bytes(MANIFEST, json.dumps(manifest, indent=2).encode()))


# --- local hubs -------------------------------------------------------------------------


def snapshot_sqlite(db: Path, target: Path) -> None:
    """A consistent copy of a live sqlite database (sqlite3's online backup API)."""
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()


@_speaks_backup()
def backup_directory(
    homes: Path,
    db: Path | None,
    url: str,
    stamp: str,
    block: Any = None,
) -> BackupCopy:
    """Copy `homes` and a snapshot of the sqlite `db` to `<url>/<stamp>/`, verify by
    listing, then write the manifest.

    Changes: objects under `<url>/<stamp>/` only. Raises `BackupFailed` when the destination
    does not hold exactly the source's files with their sizes (no manifest is written).
    """
    target = stamp_url(url, stamp)
    homes_files = source_files(homes)
    users = sorted(p.name for p in homes.iterdir() if p.is_dir()) if homes.is_dir() else []
    dest = _call(target, lambda: destination(target, block))
    files: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hubfleet-backup-") as tmp:
        dbs: list[str] = []
        if db is not None and db.is_file():
            snap = Path(tmp) / db.name
            snapshot_sqlite(db, snap)
            name = f"{HUB_DB}/{db.name}"
            _call(target, lambda: dest.put(name, snap))
            files[name] = snap.stat().st_size
            dbs.append(name)
        for rel, size in homes_files.items():
            name = f"{HOMES}/{rel}"
            _call(target, partial(dest.put, name, homes / rel))
            files[name] = size
    found: dict[str, int] = _call(target, dest.list)
    verify_copy(target, files, found)
    copy = BackupCopy(target, stamp, files, users, dbs)
    write_manifest(dest, target, copy, {})
    return copy


def restore_plan(copy: BackupCopy, users: list[str], homes: Path) -> list[RestoreRow]:
    """What restoring `users` from `copy` into `homes` would write, per user."""
    rows = []
    for user in users:
        files = copy.user_files(user)
        here = source_files(homes / user)
        rows.append(
            RestoreRow(
                user=user,
                files=len(files),
                bytes=sum(files.values()),
                missing_now=sorted(f for f in files if f not in here),
                differ_now=sorted(f for f in files if f in here and here[f] != files[f]),
            )
        )
    return rows


@_speaks_backup(restore=True)
def restore_directory(copy: BackupCopy, users: list[str], homes: Path, block: Any) -> int:
    """Write the files of `users`' homes in `copy` back under `homes/<user>`; returns how
    many. Files created since the copy are left alone. As root, restored files get the
    owner of the user's home directory (or of `homes`): the account the user's server
    runs as.

    Changes: files under `homes/<user>` for each user given.
    """
    dest = _call(copy.url, lambda: destination(copy.url, block))
    written = 0
    for user in users:
        home = homes / user
        owner_of = home if home.is_dir() else homes
        uid, gid = owner_of.stat().st_uid, owner_of.stat().st_gid
        made = not home.exists()
        for rel in copy.user_files(user):
            path = home / rel
            _refuse_links(home, path)
            new_dirs = [p for p in path.relative_to(homes).parents if not (homes / p).exists()]
            name = f"{HOMES}/{user}/{rel}"
            _call(copy.url, partial(_download, dest, name, path))
            if os.geteuid() == 0:
                for d in new_dirs:
                    if str(d) != ".":
                        os.chown(homes / d, uid, gid)
                os.chown(path, uid, gid)
            written += 1
        if made and home.is_dir() and os.geteuid() == 0:
            os.chown(home, uid, gid)
    return written


# --- Kubernetes hubs -------------------------------------------------------------------


def hub_db_volume(api: client.ApiClient, namespace: str) -> UserVolume | None:
    """The hub's database PVC (`hub-db-dir`), or None (e.g. hub.db.type: sqlite-memory)."""
    try:
        kcall(
            client.CoreV1Api(api).read_namespaced_persistent_volume_claim, HUB_DB_CLAIM, namespace
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return UserVolume(HUB_DB_CLAIM, HUB_DB_CLAIM)


def backup_volumes(
    api: client.ApiClient,
    namespace: str,
    url: str,
    stamp: str,
    block: Any,
    timeout: float,
    log: Callable[[str], None],
) -> BackupCopy:
    """Copy the hub's user PVCs and its hub-db-dir PVC with the export Job, prove each
    copy against the bucket with our own client, then write the manifest.

    Changes: a Job and its Secret created and deleted in `namespace` (per part), objects
    under `<url>/<stamp>/`. User servers keep running (the PVCs are mounted read-only).
    """
    target = stamp_url(url, stamp)
    volumes = user_volumes(api, namespace)
    db = hub_db_volume(api, namespace)
    try:
        check_destination(url, block)
        env = credential_env(url, block)
        files: dict[str, int] = {}
        dbs: list[str] = []
        for part, vols in ((HOMES, volumes), (HUB_DB, [db] if db else [])):
            if not vols:
                continue
            part_url = f"{target}/{part}"
            name = f"hubfleet-backup-{part}-{stamp.lower()}"
            log(f"{namespace}: backup Job {name} copies {len(vols)} volume(s) to {part_url}")
            log(run_job(api, namespace, name, part_url, vols, env, timeout))
            proved = verify_bucket(part_url, vols, block)
            files |= {f"{part}/{k}": v for k, v in proved.files.items()}
            if part == HUB_DB:
                dbs = [f"{part}/{k}" for k in proved.files]
    except ExportFailed as exc:
        raise reword(exc) from None
    dest = _call(target, lambda: destination(target, block))
    found = _call(target, dest.list)
    verify_copy(target, files, found)
    copy = BackupCopy(target, stamp, files, [v.user for v in volumes], dbs)
    write_manifest(dest, target, copy, {"volumes": {v.user: v.claim for v in volumes}})
    return copy


#: The restore Job's script: each user's home back from the copy (nothing deleted).
RESTORE_SCRIPT = """set -eu
for user in $HUBFLEET_RESTORE_USERS; do
  rclone copy --skip-links "$HUBFLEET_EXPORT_REMOTE/$user" "$HUBFLEET_HOMES/$user"
done
"""


def restore_volumes(
    api: client.ApiClient,
    namespace: str,
    copy: BackupCopy,
    volumes: list[UserVolume],
    block: Any,
    timeout: float,
) -> str:
    """Copy `homes/<user>` of `copy` back into each user's PVC with a Job (read-write).

    Changes: a Job and its Secret created and deleted in `namespace`; files in the PVCs.
    """
    home_url = f"{copy.url}/{HOMES}"
    name = f"hubfleet-restore-{copy.stamp.lower()}"
    env = credential_env(home_url, block)
    # The Job's own env has HUBFLEET_EXPORT_REMOTE (the copy's homes) and HUBFLEET_HOMES.
    extra = {"HUBFLEET_RESTORE_USERS": " ".join(v.user for v in volumes)}
    try:
        return run_job(
            api, namespace, name, home_url, volumes, env, timeout,
            script=RESTORE_SCRIPT, read_only=False, extra_env=extra,
        )  # fmt: skip
    except ExportFailed as exc:
        raise RestoreRefused(
            str(exc).replace("export Job", "restore Job").split("; the hub")[0]
            + "; see the Job's pod logs, fix, re-run the restore"
        ) from None


# --- where, and the Prefect tasks -------------------------------------------------------


def backup_base(cluster: Cluster, policy: BackupPolicy, default_root: Path) -> str:
    """The fleet's backup target for hubs of `cluster`: `backup.url`, else on local a
    directory under `default_root`. Raises `BackupFailed` when there is none to use."""
    if policy.url:
        if cluster.provider is not Provider.local and policy.url.startswith("file:"):
            raise BackupFailed(
                f"fleet.yaml backup.url {policy.url!r} is a local directory, but the homes of "
                f"the Kubernetes hubs of cluster {cluster.name!r} are copied by a Job in the "
                "cluster, which cannot write there; use s3://, gs:// or az:// (with "
                "backup.credentials). Nothing was changed."
            )
        return policy.url.rstrip("/")
    if cluster.provider is Provider.local:
        return f"file://{default_root}"
    raise BackupFailed(
        f"cluster {cluster.name!r} is on {cluster.provider.value} and fleet.yaml has no "
        "backup.url; add e.g. `backup: {url: s3://bucket/prefix, credentials: <block>}` to "
        "fleet/fleet.yaml. Nothing was changed."
    )


async def backup_credentials(name: str | None, url: str) -> Any:
    """The block `backup.credentials` names (None: the SDK's own credential chain)."""
    try:
        return await load_credentials(name, url)
    except ExportFailed as exc:
        raise BackupFailed(
            str(exc).replace("event.export.credentials", "backup.credentials in fleet.yaml")
        ) from None


@task(task_run_name="backup-homes-{stamp}", cache_policy=NO_CACHE)
async def backup_local_hub(
    homes: Path, db: Path, url: str, stamp: str, credentials: str | None
) -> BackupCopy:
    """Copy a local hub's homes and a snapshot of its sqlite database to `<url>/<stamp>/`
    and verify the copy. Changes: objects under `<url>/<stamp>/` only."""
    block = await backup_credentials(credentials, url)
    copy = await asyncio.to_thread(backup_directory, homes, db, url, stamp, block)
    get_run_logger().info("backed up and verified %s", copy.summary())
    return copy


@task(task_run_name="backup-volumes-{namespace}-{stamp}", cache_policy=NO_CACHE)
async def backup_kube_hub(
    api: client.ApiClient,
    namespace: str,
    url: str,
    stamp: str,
    credentials: str | None,
    timeout: float,
) -> BackupCopy:
    """Copy a Kubernetes hub's home PVCs and hub-db-dir PVC with the export Job to
    `<url>/<stamp>/` and verify the copy. Changes: Jobs and their Secrets created and
    deleted in the hub's namespace; objects under `<url>/<stamp>/`."""
    logger = get_run_logger()
    block = await backup_credentials(credentials, url)
    copy = await asyncio.to_thread(
        backup_volumes, api, namespace, url, stamp, block, timeout, logger.info
    )
    logger.info("backed up and verified %s", copy.summary())
    return copy


@task(task_run_name="prune-backups", cache_policy=NO_CACHE)
async def prune_copies(url: str, credentials: str | None, keep: int) -> list[str]:
    """Retention: delete verified copies beyond the newest `keep` and older incomplete ones.
    Changes: objects under `url` of the copies deleted."""
    block = await backup_credentials(credentials, url)
    return await asyncio.to_thread(prune, url, block, keep)


@task(task_run_name="restore-homes-{copy.stamp}", cache_policy=NO_CACHE)
async def restore_local_homes(
    copy: BackupCopy, users: list[str], homes: Path, credentials: str | None
) -> int:
    """Write `users`' homes of `copy` back under `homes`. Changes: files of those homes."""
    block = await backup_credentials(credentials, copy.url)
    return await asyncio.to_thread(restore_directory, copy, users, homes, block)


@task(task_run_name="restore-volumes-{namespace}", cache_policy=NO_CACHE)
async def restore_kube_homes(
    api: client.ApiClient,
    namespace: str,
    copy: BackupCopy,
    volumes: list[UserVolume],
    credentials: str | None,
    timeout: float,
) -> tuple[list[str], str]:
    """Stop the servers of the users restored, then copy their homes back with a Job.
    Changes: those users' server pods deleted; a Job and Secret; files in their PVCs."""
    block = await backup_credentials(credentials, copy.url)
    stopped = await asyncio.to_thread(
        stop_user_servers, api, namespace, 120, {v.claim for v in volumes}
    )
    how = await asyncio.to_thread(restore_volumes, api, namespace, copy, volumes, block, timeout)
    return stopped, how
