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
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.cluster_access import ClusterAccess, kubeconfig_file, loaded_access
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


#: Set by a fleet run: the names of the blocks of some types that existed when it started
#: (`fleet_block_snapshot`), so a hub without secret values or an OAuth client costs no
#: failed read. A block created during the fleet run is seen by the next run.
_existing_blocks: ContextVar[dict[str, frozenset[str]] | None] = ContextVar(
    "hubfleet_existing_blocks", default=None
)


def _known_missing(slug: str, name: str) -> bool:
    existing = _existing_blocks.get()
    return existing is not None and slug in existing and name not in existing[slug]


async def fleet_block_snapshot() -> None:
    """For the rest of the calling fleet run (and the hub runs it calls): which secret
    values and OAuth client blocks exist (two reads, whatever the fleet's size), and each
    cluster's access block read at most once."""
    import httpx
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from blocks.oauth_client import OAuthClient

    existing: dict[str, frozenset[str]] = {}
    async with get_client() as client:
        for slug in (Secret.get_block_type_slug(), OAuthClient.get_block_type_slug()):
            try:
                docs = await client.read_block_documents_by_type(slug, include_secrets=False)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404:
                    continue  # not known: each hub reads its own block, as without a snapshot
                docs = []  # the type was never registered: no such block exists
            existing[slug] = frozenset(d.name for d in docs if d.name)
    _existing_blocks.set(existing)
    loaded_access.set({})


async def load_secret_values(cluster: str, hub: str) -> dict[str, Any]:
    """The hub's secret values layer (from its `Secret` block), or {} if it has none."""
    from prefect.blocks.system import Secret

    if _known_missing(Secret.get_block_type_slug(), secret_values_block(cluster, hub)):
        return {}
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

    if _known_missing(OAuthClient.get_block_type_slug(), oauth_block(cluster, hub)):
        return []
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
