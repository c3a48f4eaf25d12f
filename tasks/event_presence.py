"""Which event hubs exist: local hubs by their directory, Kubernetes hubs by their Helm
release. Reads only.
"""

from __future__ import annotations

from prefect import get_run_logger

from hubfleet.model import Cluster, Fleet, HubKind, Provider
from tasks import helm as helm_tasks
from tasks.cluster_session import cluster_session
from tasks.local_hub import local_hub


async def helm_present(cluster: Cluster) -> dict[str, bool]:
    """Which hubs of a Kubernetes cluster have their Helm release (release = namespace =
    hub name). Changes nothing."""
    async with cluster_session(cluster.name) as session:
        releases = await helm_tasks.helm_releases(session.helm)
    names = {(r["name"], r["namespace"]) for r in releases}
    return {h.name: (h.name, h.name) in names for h in cluster.hubs}


async def present_event_hubs(fleet: Fleet) -> dict[tuple[str, str], bool | None]:
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


async def running_event_hubs(fleet: Fleet) -> dict[tuple[str, str], bool | None]:
    """Local hubs: processes running; Kubernetes hubs: the release exists."""
    return {
        key: (
            local_hub(fleet, *key).is_running()
            if present is not None and fleet.cluster(key[0]).provider is Provider.local
            else present
        )
        for key, present in (await present_event_hubs(fleet)).items()
    }
