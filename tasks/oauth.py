"""A hub's OAuth client secret: read from its block, written where the hub reads it, and
listed in the credential inventory (hubfleet/auth.py has the rendering and the rules).

The secret is only ever held as a SecretStr in this process: it goes into a Kubernetes
Secret through the API (never helm's values) or into a local hub's process environment.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from hubfleet.auth import KUBE_SECRET, KUBE_SECRET_KEY, SECRET_ENV, oauth_block
from hubfleet.credentials import ROTATE_BY_HAND, CredentialKind, CredentialRecord
from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet, Hub
from tasks.helm import in_thread
from tasks.kube import MANAGED_LABEL, _call
from tasks.retry import transient_retries


class OAuthClientMissing(HubfleetError):
    """A hub has `auth:` but its client secret is not stored; nothing was deployed."""


async def load_oauth_client(cluster: str, hub: Hub) -> Any | None:
    """The hub's `OAuthClient` block, or None when the hub has no `auth:`. Raises
    `OAuthClientMissing` (saying how to store it) when `auth:` is set but the block is not,
    or when the block's client id is not the fleet's."""
    from blocks.oauth_client import OAuthClient

    if hub.auth is None:
        return None
    name = oauth_block(cluster, hub.name)
    try:
        block: Any = await OAuthClient.aload(name)
    except ValueError:
        raise OAuthClientMissing(
            f"hub {cluster}/{hub.name} has `auth:` but its client secret is not stored: run "
            f"`hubfleet oauth-client set {cluster} {hub.name}` and paste the secret on stdin "
            f"(or create the OAuth Client block {name!r} in the UI). Nothing was deployed."
        ) from None
    if block.client_id != hub.auth.client_id:
        raise OAuthClientMissing(
            f"the OAuth Client block {name!r} holds the secret of client {block.client_id!r}, "
            f"but cluster.yaml says client_id: {hub.auth.client_id!r}; store the secret of "
            f"that client with `hubfleet oauth-client set {cluster} {hub.name}`. "
            "Nothing was deployed."
        )
    return block


def secret_version(block: Any) -> str:
    """Not secret: when the stored secret was last replaced (restarts the hub when it is)."""
    when = block.last_rotated or block.created_at
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def local_env(block: Any | None) -> dict[str, SecretStr]:
    """The environment a local hub's process gets for its login (none without `auth:`)."""
    return {} if block is None else {SECRET_ENV: block.client_secret}


async def store_oauth_client(cluster: str, hub: str, client_id: str, secret: SecretStr) -> str:
    """Store (or replace) a hub's client secret in its block; returns 'created' or
    'replaced'. A replacement keeps created_at and sets last_rotated (the inventory's age)."""
    from blocks.oauth_client import OAuthClient

    name = oauth_block(cluster, hub)
    now = datetime.now(UTC)
    old: Any
    try:
        old = await OAuthClient.aload(name)
    except ValueError:
        old = None
    block = OAuthClient(
        hub=f"{cluster}/{hub}",
        client_id=client_id,
        client_secret=secret,
        created_at=old.created_at if old else now,
        last_rotated=now if old else None,
    )
    await block.asave(name, overwrite=True)
    return "replaced" if old else "created"


def _write_secret(api: client.ApiClient, namespace: str, secret: SecretStr, version: str) -> bool:
    """Create or replace the Secret the hub reads its client secret from; True if changed."""
    core = client.CoreV1Api(api)
    data = {KUBE_SECRET_KEY: base64.b64encode(secret.get_secret_value().encode()).decode()}
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=KUBE_SECRET,
            labels={MANAGED_LABEL: "true"},
            annotations={"hubfleet.io/oauth-client-version": version},
        ),
        type="Opaque",
        data=data,
    )
    try:
        current: Any = _call(core.read_namespaced_secret, KUBE_SECRET, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        _call(core.create_namespaced_secret, namespace, body)
        return True
    if (current.data or {}) == data:
        return False
    _call(core.replace_namespaced_secret, KUBE_SECRET, namespace, body)
    return True


@task(task_run_name="write-oauth-secret-{namespace}", cache_policy=NO_CACHE, **transient_retries())
async def write_oauth_secret(api: client.ApiClient, namespace: str, block: Any) -> bool:
    """Put the hub's client secret into the Secret `hubfleet-oauth` of its namespace
    (changes the cluster; the hub reads it through `hub.extraEnv`). True if it changed."""
    return await in_thread(
        _write_secret, api, namespace, block.client_secret, secret_version(block)
    )


async def oauth_records(fleet: Fleet, cluster: str, hub: Hub) -> list[CredentialRecord]:
    """The inventory's line for a hub's OAuth client: its age, and when to rotate it by
    hand (no provider offers an API that issues a new client secret)."""
    from blocks.oauth_client import OAuthClient

    if hub.auth is None:
        return []
    name = oauth_block(cluster, hub.name)
    try:
        block: Any = await OAuthClient.aload(name)
    except ValueError:
        block = None
    max_age: timedelta = fleet.settings.credentials.oauth_client
    if block is None:
        note = f"not stored: hubfleet oauth-client set {cluster} {hub.name}"
    else:
        due = (block.last_rotated or block.created_at) + max_age
        note = f"{ROTATE_BY_HAND}; due {due:%Y-%m-%d}"
    return [
        CredentialRecord(
            cluster,
            hub.name,
            CredentialKind.oauth_client_secret,
            f"{hub.auth.provider.value} client {hub.auth.client_id}",
            block.created_at if block else None,
            block.last_rotated if block else None,
            max_age,
            (f"block:{name}",),
            note=note,
        )
    ]
