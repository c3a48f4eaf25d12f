"""PersistentVolumes for the test control plane, which has no storage provisioner: PVCs
(hub databases, user homes) bind to these hostPath volumes. kwok runs no containers, so the
paths are never written."""

from __future__ import annotations

from typing import Any


def create_volumes(
    api: Any, prefix: str, count: int, size: str = "5Gi", reclaim: str = "Retain"
) -> list[str]:
    """Create `prefix-0` .. `prefix-<count-1>` (ReadWriteOnce, `size`), skipping any that
    exist; returns their names."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    names = [f"{prefix}-{i}" for i in range(count)]
    for name in names:
        body = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": size},
                access_modes=["ReadWriteOnce"],
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/{name}"),
                persistent_volume_reclaim_policy=reclaim,
            ),
        )
        try:
            core.create_persistent_volume(body)
        except ApiException as exc:
            if exc.status != 409:  # already there (a fixture re-run in one session)
                raise
    return names
