"""One cluster session per operation, made in one place, and always scrubbed.

The cluster's access block, its kubeconfig in a 0600 temp file (removed afterwards), a helm
whose output and errors are scrubbed, and a Kubernetes API client on the same kubeconfig;
both held to the cluster's client-side API rate limit (cluster.yaml `api_qps`, `api_burst`).

- `cluster_session(cluster)`: for work on the cluster as a whole (the support chart,
  orphans, which hubs exist); helm is scrubbed of the kubeconfig's credentials.
- `hub_session(cluster, hub)`: for work on one hub; it reads the hub's secrets itself (its
  secret values `Secret` block and, if the hub logs users in, its `OAuthClient` block) and
  scrubs helm of every one of them too, so no hub operation can forget to pass them. The
  secret values are handed to the operation (`secret_values`), the one place a deploy gets
  them from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.cluster_access import ClusterAccess, kubeconfig_file
from hubfleet.auth import oauth_block
from hubfleet.errors import HubfleetError
from hubfleet.loader import FleetInvalid
from hubfleet.values import secret_values_block
from tasks import helm as helm_tasks
from tasks import kube


@dataclass(frozen=True)
class ClusterSession:
    access: ClusterAccess
    kubeconfig: Path
    helm: helm_tasks.Helm
    api: Any  # kubernetes.client.ApiClient


@dataclass(frozen=True)
class HubSession(ClusterSession):
    secret_values: dict[str, Any]  # the hub's secret values layer ({} if it has none)


async def load_secret_values(cluster: str, hub: str) -> dict[str, Any]:
    """The hub's secret values layer (from its `Secret` block), or {} if it has none."""
    from prefect.blocks.system import Secret

    try:
        block: Any = await Secret.aload(secret_values_block(cluster, hub))
    except ValueError:
        return {}
    value: Any = block.get()
    if not isinstance(value, dict):
        raise HubfleetError(
            f"Secret block {secret_values_block(cluster, hub)!r} must hold a mapping of chart "
            "values (e.g. {'hub': {'cookieSecret': '...'}}); nothing was applied"
        )
    return value


def secret_strings(values: Any) -> list[str]:
    """Every leaf of a secret values mapping, as the strings helm's output is scrubbed of."""
    if isinstance(values, dict):
        return [s for v in values.values() for s in secret_strings(v)]
    if isinstance(values, list):
        return [s for v in values for s in secret_strings(v)]
    return [str(values)] if values not in (None, "", True, False) else []


def api_limits(cluster: str) -> kube.ApiLimits:
    """The cluster's client-side API rate limit from the fleet (cluster.yaml `api_qps`,
    `api_burst`); the defaults for a cluster the fleet does not list (or no fleet)."""
    from flows.operation import current_fleet  # flows import tasks, not the reverse

    try:
        spec = current_fleet().cluster(cluster)
    except (LookupError, FleetInvalid, OSError):
        return kube.ApiLimits()
    return kube.ApiLimits.of(spec)


@asynccontextmanager
async def _opened(cluster: str, secrets: Sequence[str]) -> AsyncIterator[ClusterSession]:
    access = await ClusterAccess.for_cluster(cluster)
    scrub = [*secrets, access.kubeconfig.get_secret_value()]
    limits = api_limits(cluster)
    bucket = kube.cluster_bucket(cluster, limits)
    with (
        kubeconfig_file(access) as kubeconfig,
        helm_tasks.helm_for(kubeconfig, access.context, scrub, limits.helm_args()) as helm,
        kube.kube_client(kubeconfig, access.context, bucket) as api,
    ):
        yield ClusterSession(access, kubeconfig, helm, api)


@asynccontextmanager
async def cluster_session(cluster: str) -> AsyncIterator[ClusterSession]:
    """A session on `cluster` as a whole; helm is scrubbed of the kubeconfig."""
    async with _opened(cluster, ()) as session:
        yield session


async def _oauth_secret(cluster: str, hub: str) -> list[str]:
    """The hub's OAuth client secret, if one is stored (whatever the fleet says now)."""
    from blocks.oauth_client import OAuthClient

    try:
        block: Any = await OAuthClient.aload(oauth_block(cluster, hub))
    except ValueError:
        return []
    return [block.client_secret.get_secret_value()]


@asynccontextmanager
async def hub_session(cluster: str, hub: str) -> AsyncIterator[HubSession]:
    """A session for one hub's operation; helm is scrubbed of the hub's secrets too."""
    values = await load_secret_values(cluster, hub)
    scrub = secret_strings(values) + await _oauth_secret(cluster, hub)
    async with _opened(cluster, scrub) as session:
        yield HubSession(session.access, session.kubeconfig, session.helm, session.api, values)
