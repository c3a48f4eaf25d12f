"""Rotating a hub's ops token on a real local JupyterHub, with a real Prefect server.

Real components only: JupyterHub + configurable-http-proxy processes, the Prefect server
(transactions, rollback hooks, blocks, artifacts), HTTP to the hub's REST API.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import requests

from blocks.hub_token import HubOpsToken
from flows.check_hub_health import check_hub_health
from flows.deploy_hub import deploy_hub
from flows.rotate_credentials import RotationsFailed, rotate_credentials
from hubfleet.credentials import BadScope
from hubfleet.health import HEALTH_USER
from hubfleet.localhub import OPS_USER
from tasks import jupyterhub_api as api
from tasks.hub_credentials import HubOpsTokenRotator
from tasks.rotation import CredentialRefused, Issued
from testenv import history

pytestmark = pytest.mark.usefixtures("prefect_server")


def status_with(url: str, token: str) -> int:
    return requests.get(
        f"{url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=5
    ).status_code


async def artifacts_with_key_prefix(prefix: str) -> list[Any]:
    return await history.artifacts(prefix=prefix)


async def test_rotation_new_works_old_refused_health_passes_throughout() -> None:
    deployed = await deploy_hub(cluster="local", hub="staging")
    url = deployed.url
    before = await HubOpsToken.aload("local-staging")
    old_token = before.token.get_secret_value()
    assert before.last_rotated is None

    verdicts: list[str] = []
    rotating = True

    async def probe_until_done() -> None:
        while rotating or len(verdicts) < 3:
            verdicts.append((await check_hub_health(cluster="local", hub="staging")).verdict)

    prober = asyncio.create_task(probe_until_done())
    try:
        result = await rotate_credentials(
            scope="hub:local/staging", max_age=timedelta(0), operator="carol"
        )
    finally:
        rotating = False
        await prober
    assert len(result.rotated) == 1
    done = result.rotated[0]
    assert done.kind == "hub-ops-token" and done.owner == "local/staging"
    assert done.old == before.token_id and done.new != before.token_id

    after = await HubOpsToken.aload("local-staging")
    new_token = after.token.get_secret_value()
    assert after.token_id == done.new and after.last_rotated is not None
    assert after.expires_at is not None and after.expires_at > after.created_at
    # The new token works; the old one is refused with 403 by the real hub.
    assert api.whoami(url, new_token)["name"] == OPS_USER
    assert status_with(url, old_token) == 403
    # Exactly one ops token is left: the new one (the old one is revoked).
    assert api.list_tokens(url, new_token, OPS_USER) == [done.new]
    # The health probe passed before, during and after the rotation.
    assert len(verdicts) >= 3 and set(verdicts) == {"healthy"}, verdicts


async def test_failed_verification_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the new token 'fails' verification (the adapter's verify is wrapped
    to refuse anything but the old token); everything else is real."""
    deployed = await deploy_hub(cluster="local", hub="prod")
    url = deployed.url
    before = await HubOpsToken.aload("local-prod")
    real_verify = HubOpsTokenRotator.verify

    async def verify_refusing_new(self: HubOpsTokenRotator, credential: Issued) -> str:
        if credential.ident != before.token_id:
            raise CredentialRefused(f"injected fault: refusing {credential.ident}")
        return await real_verify(self, credential)

    monkeypatch.setattr(HubOpsTokenRotator, "verify", verify_refusing_new)
    with pytest.raises(RotationsFailed, match=r"rolled back: .*deleted the new credential"):
        await rotate_credentials(scope="hub:local/prod", max_age=timedelta(0))

    # The old token is still stored, unchanged, and works; the new token is revoked.
    after = await HubOpsToken.aload("local-prod")
    assert after.token_id == before.token_id
    assert after.token.get_secret_value() == before.token.get_secret_value()
    assert after.last_rotated is None
    token = after.token.get_secret_value()
    assert api.whoami(url, token)["name"] == OPS_USER
    assert api.list_tokens(url, token, OPS_USER) == [before.token_id]
    # The run says what was rolled back.
    [artifact] = await artifacts_with_key_prefix("rotation-hub-ops-token-local-prod")
    text = str(artifact.data)
    assert "FAILED" in text and "injected fault" in text
    assert "deleted the new credential" in text
    assert f"restored {before.token_id} in the block" in text
    assert f"checked: the old credential {before.token_id} works" in text
    monkeypatch.undo()
    assert (await check_hub_health(cluster="local", hub="prod")).verdict == "healthy"


async def test_dry_run_and_policy_change_nothing() -> None:
    await deploy_hub(cluster="local", hub="workshop")
    before = await HubOpsToken.aload("local-workshop")
    dry = await rotate_credentials(scope="hub:local/workshop", max_age=timedelta(0), dry_run=True)
    assert dry.would_rotate == ["hub-ops-token local/workshop"]
    # Within policy (30 days by default): nothing is due, nothing changes.
    fresh = await rotate_credentials(scope="hub:local/workshop")
    assert fresh.rotated == []
    after = await HubOpsToken.aload("local-workshop")
    assert after.token_id == before.token_id


async def test_ops_token_cannot_make_admins_or_delete_users() -> None:
    """Least privilege, on a real hub: the ops token runs the health levels, but the hub
    refuses it when it tries to grant admin, delete a user, or mint an admin service."""
    deployed = await deploy_hub(cluster="local", hub="staging")
    url = deployed.url
    block = await HubOpsToken.aload("local-staging")
    token = block.token.get_secret_value()
    assert block.expires_at is not None
    assert (
        await check_hub_health(cluster="local", hub="staging", depth="deep")
    ).verdict == "healthy"
    attempts = [
        ("POST", "users/mallory", {"admin": True}),
        ("PATCH", f"users/{HEALTH_USER}", {"admin": True}),
        ("DELETE", f"users/{HEALTH_USER}", None),
        ("POST", "services/mallory", {"admin": True, "api_token": "x" * 32}),
        ("POST", "users/hubfleet-bootstrap/tokens", {}),
    ]
    for method, path, body in attempts:
        with pytest.raises(api.HubApiError, match=r"HTTP 40[34]"):
            api.call(method, f"{url}/hub/api/{path}", token=token, json=body)
    user = api.call("GET", f"{url}/hub/api/users/{HEALTH_USER}", token=token).json()
    assert user["admin"] is False


async def test_bad_scope_is_a_clear_error() -> None:
    with pytest.raises(BadScope, match=r"scope 'hub:local/nope': cluster 'local' has no hub"):
        await rotate_credentials(scope="hub:local/nope")
    with pytest.raises(BadScope, match="unknown kind 'password'; allowed: hub-ops-token"):
        await rotate_credentials(scope="kind:password")
