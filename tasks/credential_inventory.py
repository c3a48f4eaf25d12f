"""The credential inventory: every credential hubfleet manages, with its age and where it
is stored (`hubfleet credentials`, `rotate_credentials`'s plan). Reads only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hubfleet.credentials import (
    DEPLOYER_KIND,
    CredentialKind,
    CredentialRecord,
    policy_max_age,
)
from hubfleet.model import Fleet, Provider


@task(task_run_name="collect-credential-inventory", cache_policy=NO_CACHE)
async def collect_inventory(fleet: Fleet) -> list[CredentialRecord]:
    """Read-only: every credential hubfleet manages, from its blocks and the hubs' state."""
    from blocks.deployer_credential import DeployerCredential
    from blocks.hub_token import HubOpsToken
    from tasks.hub_secrets import kube_hub_secret_records
    from tasks.oauth import oauth_records

    policy = fleet.settings.credentials
    records: list[CredentialRecord] = []
    for cluster in fleet.clusters:
        kube_secrets: list[CredentialRecord] = []
        if cluster.provider is not Provider.local and cluster.hubs:
            kube_secrets = await kube_hub_secret_records(fleet, cluster.name)
        kind = DEPLOYER_KIND.get(cluster.provider)
        if kind is not None:
            dep: DeployerCredential | None
            try:
                dep = await DeployerCredential.aload(DeployerCredential.block_name(cluster.name))
            except ValueError:
                dep = None
            records.append(
                CredentialRecord(
                    cluster.name,
                    None,
                    kind,
                    dep.credential_id if dep else "-",
                    dep.created_at if dep else None,
                    dep.last_rotated if dep else None,
                    policy_max_age(policy, kind),
                    tuple([f"block:{dep.secret_block}", *dep.consumed_by]) if dep else (),
                    note=f"principal {dep.principal}" if dep else "not registered",
                )
            )
        for hub in cluster.hubs:
            token: HubOpsToken | None
            try:
                token = await HubOpsToken.aload(HubOpsToken.block_name(cluster.name, hub.name))
            except ValueError:
                token = None
            records.append(
                CredentialRecord(
                    cluster.name,
                    hub.name,
                    CredentialKind.hub_ops_token,
                    f"hubfleet-ops token {token.token_id}" if token else "-",
                    token.created_at if token else None,
                    token.last_rotated if token else None,
                    policy_max_age(policy, CredentialKind.hub_ops_token),
                    (f"block:{HubOpsToken.block_name(cluster.name, hub.name)}",),
                    note=(f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "")
                    if token
                    else "no token stored (never deployed)",
                )
            )
            records.extend(_hub_secrets(fleet, cluster.name, hub.name, policy))
            records.extend(r for r in kube_secrets if r.hub == hub.name)
            records.extend(await oauth_records(fleet, cluster.name, hub))
    return records


def _hub_secrets(fleet: Fleet, cluster: str, hub: str, policy: Any) -> list[CredentialRecord]:
    """A local hub's cookie secret (a file) and proxy token (new at every start). Kubernetes
    hubs' secrets are read from their Secret (tasks/hub_secrets.py)."""
    from tasks.local_hub import local_hub

    if fleet.cluster(cluster).provider is not Provider.local:
        return []
    local = local_hub(fleet, cluster, hub)
    cookie = local.directory / "jupyterhub_cookie_secret"
    if not cookie.is_file():
        return []
    made = datetime.fromtimestamp(cookie.stat().st_mtime, UTC)
    max_age = policy_max_age(policy, CredentialKind.hub_secret)
    state = local.state()
    started = datetime.fromisoformat(state.started_at) if state and state.started_at else None
    return [
        CredentialRecord(
            cluster,
            hub,
            CredentialKind.hub_secret,
            "cookie-secret",
            made,
            None,
            max_age,
            (f"file:{cookie.name}",),
            note="rotating logs every user out",
        ),
        CredentialRecord(
            cluster,
            hub,
            CredentialKind.hub_secret,
            "proxy-auth-token",
            started,
            None,
            max_age,
            ("env:CONFIGPROXY_AUTH_TOKEN",),
            note="new at every hub start: rotating it is a restart",
        ),
    ]
