"""How an operation reaches a hub over HTTP, for as long as it needs it.

Local hubs answer on their loopback port. A Kubernetes hub answers at `https://<domain>`
(its ingress, as users reach it), or, on clusters with `hub_access: port-forward`, at its
proxy through the Kubernetes API with the cluster's own credentials (what `kubectl
port-forward` does; tasks/kube_portforward.py): for hubs with no public DNS yet, private
clusters and CI. Either way the hub is reached through its proxy, as users reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hubfleet.model import Fleet, Provider

#: The pods and port of z2jh's proxy (configurable-http-proxy's public port).
PROXY_SELECTOR = "component=proxy"
PROXY_PORT = 8000


def canonical_url(fleet: Fleet, cluster: str, hub: str) -> str | None:
    """Where users reach the hub (None for a local hub never deployed)."""
    spec = fleet.cluster(cluster)
    if spec.provider is Provider.local:
        from tasks.local_hub import local_hub

        state = local_hub(fleet, cluster, hub).state()
        return state.url if state else None
    return f"https://{spec.hub(hub).domain}"


@asynccontextmanager
async def hub_endpoint(fleet: Fleet, cluster: str, hub: str) -> AsyncIterator[str | None]:
    """The URL to reach the hub at while the block runs (None: never deployed, local)."""
    spec = fleet.cluster(cluster)
    if spec.provider is Provider.local or spec.hub_access == "domain":
        yield canonical_url(fleet, cluster, hub)
        return
    from tasks.cluster_session import cluster_session
    from tasks.helm import in_thread
    from tasks.kube_portforward import PortForward

    async with cluster_session(cluster) as session:
        forward = PortForward(session.api, hub, PROXY_SELECTOR, PROXY_PORT)
        await in_thread(forward.start)
        try:
            yield forward.url
        finally:
            await in_thread(forward.close)
