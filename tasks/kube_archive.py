"""Keep (or drop) a Kubernetes hub's home volumes when its namespace goes.

A user's home is a PVC in the hub's namespace (KubeSpawner's `claim-<user>`) bound to a
PersistentVolume, which lives outside the namespace. Deleting the namespace deletes the
claims; what happens to the volumes then is their reclaim policy: `Delete` (what dynamic
provisioning gives on every cloud) destroys the disk, `Retain` keeps it, `Released`.

Archive (teardown keeping data, no export destination): each home volume gets `Retain`
and labels and annotations saying whose it was, so it survives the namespace and can be
found (`kubectl get pv -l hubfleet.io/archived-hub=<hub>`) and re-bound or exported later.
Drop (`--delete-data`): each home volume gets `Delete`, so the storage backend removes the
data once the namespace (and with it the claim) is gone, whatever policy it had before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.helm import in_thread
from tasks.kube import _call as kcall
from tasks.kube_export import user_volumes

#: Labels on an archived volume: select a hub's (or a cluster's) archived homes by them.
ARCHIVED_HUB = "hubfleet.io/archived-hub"
ARCHIVED_CLUSTER = "hubfleet.io/archived-cluster"
ARCHIVED_USER = "hubfleet.io/archived-user"
#: Annotations: when it was archived, and the claim it was bound to (namespace/name).
ARCHIVED_AT = "hubfleet.io/archived-at"
ARCHIVED_CLAIM = "hubfleet.io/archived-claim"


@dataclass(frozen=True)
class HomeVolume:
    """A user's home: the claim in the hub's namespace and the volume bound to it (None
    while the claim is not bound: then there is no data to keep)."""

    claim: str
    user: str
    volume: str | None


def archive_patch(cluster: str, hub: str, home: HomeVolume, at: datetime) -> dict[str, Any]:
    """The PersistentVolume patch that keeps `home` past its namespace, labelled as whose."""
    return {
        "metadata": {
            "labels": {ARCHIVED_HUB: hub, ARCHIVED_CLUSTER: cluster, ARCHIVED_USER: home.user},
            "annotations": {
                ARCHIVED_AT: at.isoformat(timespec="seconds"),
                ARCHIVED_CLAIM: f"{hub}/{home.claim}",
            },
        },
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    }


#: The patch that lets the storage backend delete a home volume with its claim.
DROP_PATCH: dict[str, Any] = {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}


def home_volumes(api: client.ApiClient, namespace: str) -> list[HomeVolume]:
    """The hub's user home claims and the volumes bound to them. Changes nothing."""
    core = client.CoreV1Api(api)
    found = []
    for v in user_volumes(api, namespace):
        pvc: Any = kcall(core.read_namespaced_persistent_volume_claim, v.claim, namespace)
        found.append(HomeVolume(v.claim, v.user, pvc.spec.volume_name or None))
    return found


def _patch_volumes(api: client.ApiClient, patches: dict[str, dict[str, Any]]) -> None:
    core = client.CoreV1Api(api)
    for name, body in patches.items():
        kcall(core.patch_persistent_volume, name, body)


@task(task_run_name="archive-home-volumes-{hub}", cache_policy=NO_CACHE)
async def archive_home_volumes(
    api: client.ApiClient, cluster: str, hub: str, homes: list[HomeVolume], at: datetime
) -> list[str]:
    """Keep the hub's home volumes when its namespace is deleted.

    Changes: each bound home PersistentVolume's reclaim policy (Retain), labels and
    annotations (hub, cluster, user, time, claim). Returns the volume names kept.
    """
    patches = {h.volume: archive_patch(cluster, hub, h, at) for h in homes if h.volume}
    await in_thread(_patch_volumes, api, patches)
    unbound = [h.claim for h in homes if not h.volume]
    if unbound:  # never bound: the user never started a server, nothing was written
        get_run_logger().info("%s: unbound claims (no data): %s", hub, ", ".join(unbound))
    return sorted(patches)


@task(task_run_name="drop-home-volumes-{hub}", cache_policy=NO_CACHE)
async def drop_home_volumes(api: client.ApiClient, hub: str, homes: list[HomeVolume]) -> list[str]:
    """Let the storage backend delete the hub's home volumes with their claims.

    Changes: each bound home PersistentVolume's reclaim policy (Delete). The data goes
    when the namespace is deleted. Returns the volume names.
    """
    names = sorted(h.volume for h in homes if h.volume)
    await in_thread(_patch_volumes, api, dict.fromkeys(names, DROP_PATCH))
    return names


def volumes_left(api: client.ApiClient, names: list[str]) -> dict[str, str]:
    """Which of these PersistentVolumes still exist, each with its phase and why (a volume
    whose backend could not delete it is `Failed` with the reason). Changes nothing."""
    core, left = client.CoreV1Api(api), {}
    for name in names:
        try:
            pv: Any = kcall(core.read_persistent_volume, name)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        why = f": {pv.status.message}" if pv.status.message else ""
        left[name] = f"{pv.status.phase}{why}"
    return left
