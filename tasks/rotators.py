"""Which `Rotator` rotates a credential: `rotator_for(fleet, kind, cluster, hub)`.

The protocol is tasks/rotation.py's; each kind's adapter is its own module, imported only
when its kind is rotated (each pulls in its cloud SDK, and most runs need one or none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hubfleet.credentials import DEPLOYER_KIND, CredentialKind
from hubfleet.errors import ProviderNotReady
from hubfleet.model import Fleet, Provider
from tasks.rotation import CredentialRefused, Rotator


@asynccontextmanager
async def rotator_for(
    fleet: Fleet, kind: CredentialKind, cluster: str, hub: str | None
) -> AsyncIterator[Rotator]:
    """The adapter that rotates `kind` for `cluster` (and `hub`), loaded from its blocks,
    usable for as long as the block runs.

    A context manager because a Kubernetes hub's ops token is rotated through the hub's
    API, which on `hub_access: port-forward` clusters is a relay through the Kubernetes API
    (tasks/hub_access.py): it stays open for the whole rotation (create, verify, revoke,
    verify-refused) and closes after it. The block keeps the hub's canonical URL (its
    domain), never the relay's loopback address.
    """
    from tasks.hub_credentials import HubOpsTokenRotator

    spec = fleet.cluster(cluster)
    if kind is CredentialKind.hub_ops_token and hub is not None:
        if spec.provider is Provider.local:
            from tasks.local_hub import local_hub

            state = local_hub(fleet, cluster, hub).state()
            if state is None:
                raise CredentialRefused(f"hub {cluster}/{hub} was never deployed; deploy it first")
            yield HubOpsTokenRotator(cluster, hub, state.url)
            return
        from tasks.hub_access import canonical_url, hub_endpoint

        async with hub_endpoint(fleet, cluster, hub) as url:
            assert url is not None  # Kubernetes hubs always have an endpoint
            yield HubOpsTokenRotator(cluster, hub, url, canonical_url(fleet, cluster, hub))
        return
    if kind is CredentialKind.hub_secret and hub is not None:
        from tasks.hub_secrets import KubeHubSecretRotator, LocalHubSecretRotator

        if spec.provider is Provider.local:
            yield LocalHubSecretRotator(fleet, cluster, hub)
        else:
            yield await KubeHubSecretRotator.for_hub(cluster, hub)
        return
    if hub is None and kind is DEPLOYER_KIND.get(spec.provider):
        yield await _deployer_rotator(kind, cluster)
        return
    raise ProviderNotReady(
        f"rotating {kind} for {cluster}{'/' + hub if hub else ''} is not supported. "
        "Nothing was changed."
    )


async def _deployer_rotator(kind: CredentialKind, cluster: str) -> Rotator:
    if kind is CredentialKind.aws_access_key:
        from tasks.aws_iam import AwsAccessKeyRotator

        return await AwsAccessKeyRotator.for_cluster(cluster)
    if kind is CredentialKind.gcp_service_account_key:
        from tasks.gcp_iam import GcpServiceAccountKeyRotator

        return await GcpServiceAccountKeyRotator.for_cluster(cluster)
    if kind is CredentialKind.azure_client_secret:
        from tasks.azure_ad import AzureClientSecretRotator

        return await AzureClientSecretRotator.for_cluster(cluster)
    if kind is CredentialKind.kube_service_account_token:
        from tasks.kube_credentials import KubeTokenRotator

        return await KubeTokenRotator.for_cluster(cluster)
    raise ProviderNotReady(
        f"rotating {kind} for cluster {cluster!r} is not built yet; nothing was changed."
    )
