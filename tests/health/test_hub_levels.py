"""check_hub_health level by level against real local JupyterHubs.

Real components only: a real Prefect server, real JupyterHub + configurable-http-proxy
processes deployed by deploy_hub, a real single-user server and kernel for `spawn`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter

from blocks.hub_token import HubOpsToken
from flows.check_hub_health import check_hub_health
from flows.deploy_hub import deploy_hub
from hubfleet.health import HEALTH_USER
from hubfleet.loader import load_fleet
from hubfleet.results import HubHealth, ProbeRow
from tasks import jupyterhub_api as api
from tasks.local_hub import local_hub

pytestmark = pytest.mark.usefixtures("prefect_server", "health_fleet")


def levels(report: HubHealth) -> dict[str, ProbeRow]:
    return {p.level: p for p in report.probes}


async def logs_and_artifacts() -> str:
    """Every log message and artifact of the server, as one string to scan for secrets."""
    logs, artifacts = [], []
    async with get_client() as client:
        while page := await client.read_logs(LogFilter(), limit=200, offset=len(logs)):
            logs += page
        while page := await client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts += page
    return "\n".join([log.message for log in logs] + [str(a.data) for a in artifacts])


async def test_healthy_hub_passes_every_level(data_dir: Path) -> None:
    deployed = await deploy_hub(cluster="hc", hub="ok")
    url = deployed.url
    token = (await HubOpsToken.aload("hc-ok")).token.get_secret_value()
    # A leftover server of the health user, as an earlier failed probe would leave it.
    api.call("POST", f"{url}/hub/api/users/{HEALTH_USER}/server", token=token, timeout=30)

    report = await check_hub_health("hc", "ok", depth="deep")

    assert report.verdict == "healthy", report
    seen = levels(report)
    assert list(seen) == ["reachable", "api", "auth", "spawn", "tls", "k8s"]
    assert [seen[lv].status for lv in ("reachable", "api", "auth", "spawn")] == ["ok"] * 4
    assert seen["auth"].detail == "hubfleet-ops"
    # The kernel computed a*b and the probe checked it; the leftover was stopped first.
    assert "ran code in a kernel" in seen["spawn"].detail
    assert "stopped a leftover server first" in seen["spawn"].detail
    assert seen["tls"].status == "skip" and "plain-http" in seen["tls"].reason
    assert seen["k8s"].status == "skip"
    # The probe always stops the server it started.
    user = api.call("GET", f"{url}/hub/api/users/{HEALTH_USER}", token=token).json()
    assert user["servers"] == {} and user["pending"] is None
    # The health user can never log in: the null authenticator lets nobody in, and the
    # hub's config blocks it by name too; it is no admin.
    hub_config = (data_dir / "hubs" / "hc" / "ok" / "jupyterhub_config.py").read_text()
    assert HEALTH_USER in hub_config and "blocked_users" in hub_config
    assert user["admin"] is False
    # The ops token appears in no log or artifact of any run.
    assert token not in await logs_and_artifacts()


async def test_spawner_error_is_degraded_at_spawn() -> None:
    await deploy_hub(cluster="hc", hub="nospawn")

    report = await check_hub_health("hc", "nospawn", depth="spawn")

    assert report.verdict == "degraded", report
    assert report.level == "spawn"
    # The spawner's own error, not a bare "500".
    assert "No such file or directory" in report.reason, report.reason
    assert "/nonexistent/jupyterhub-singleuser" in report.reason
    assert [p.status for p in report.probes] == ["ok", "ok", "ok", "FAIL"]


async def test_revoked_token_is_auth_and_stopped_hub_is_down(data_dir: Path) -> None:
    deployed = await deploy_hub(cluster="hc", hub="ok")
    block = await HubOpsToken.aload("hc-ok")
    # Revoke the ops token the way rotation does: by its id.
    token = block.token.get_secret_value()
    api.revoke_token(deployed.url, token, "hubfleet-ops", block.token_id)

    revoked = await check_hub_health("hc", "ok")
    assert revoked.verdict == "degraded", revoked  # the hub is up: not "down"
    assert revoked.level == "auth"
    assert "token refused" in revoked.reason and "revoked" in revoked.reason

    local_hub(load_fleet(str(_fleet())), "hc", "ok").stop()
    stopped = await check_hub_health("hc", "ok", depth="deep")
    assert stopped.verdict == "down", stopped
    assert stopped.level == "reachable"
    assert "connection failed" in stopped.reason or "503" in stopped.reason
    # Nothing else answers over HTTP, so only reachable (and k8s, skipped here) ran.
    assert [p.level for p in stopped.probes] == ["reachable", "k8s"]


async def test_unknown_depth_names_the_allowed_ones() -> None:
    from hubfleet.health import BadDepth

    with pytest.raises(BadDepth, match=r"depth 'deeper' is not known; use one of: shallow, deep"):
        await check_hub_health("hc", "ok", depth="deeper")


def _fleet() -> Path:
    import os

    return Path(os.environ["HUBFLEET_FLEET"])
