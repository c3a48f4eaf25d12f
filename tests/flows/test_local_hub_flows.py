"""deploy_hub, check_hub_health and teardown_hub on the local provider.

Real components only: a real Prefect server (authentication on), real JupyterHub and
configurable-http-proxy processes, real HTTP.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from uuid import UUID

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks.hub_token import HubOpsToken
from flows.check_hub_health import check_hub_health
from flows.deploy_hub import deploy_hub
from flows.teardown_hub import teardown_hub
from hubfleet.errors import ProviderNotReady
from hubfleet.loader import load_fleet
from hubfleet.results import HubDeployed
from tasks import jupyterhub_api as api
from tasks.local_hub import local_hub

pytestmark = pytest.mark.usefixtures("prefect_server")


def hub_dir(hub: str) -> Path:
    return local_hub(load_fleet("fleet"), "local", hub).directory


async def run_of(result_state_run_id: UUID):
    async with get_client() as client:
        return await client.read_flow_run(result_state_run_id)


async def latest_run(flow_name: str, tag: str):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return runs[0]


async def all_logs_and_artifacts() -> tuple[list, list]:
    from prefect.client.schemas.filters import LogFilter

    logs, artifacts = [], []
    async with get_client() as client:
        while page := await client.read_logs(LogFilter(), limit=200, offset=len(logs)):
            logs += page
        while page := await client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts += page
    return logs, artifacts


def scan_for(secret: str, root: Path) -> list[Path]:
    """Files under root whose bytes contain the secret."""
    needle = secret.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_deploy_check_teardown_lifecycle(data_dir: Path) -> None:
    result = await deploy_hub(cluster="local", hub="staging", operator="alice")
    assert result.action == "start"
    assert result.health == "healthy"
    url = result.url

    # The run records op/cluster/hub tags, who started it and the fleet revision.
    run = await latest_run("deploy_hub", "hub:local/staging")
    assert {"op:deploy_hub", "cluster:local", "hub:local/staging", "operator:alice"} <= set(
        run.tags
    )
    assert any(t.startswith("revision:") for t in run.tags)

    # The ops token is in its block, works, belongs to the hubfleet-ops user and expires.
    block = await HubOpsToken.aload("local-staging")
    token = block.token.get_secret_value()
    assert api.whoami(url, token)["name"] == "hubfleet-ops"
    assert api.list_tokens(url, token, "hubfleet-ops") == [block.token_id]
    assert block.expires_at is not None
    # ... the ops user has no rights over the bootstrap admin, which has no token left
    # (read from the hub's own database).
    with pytest.raises(api.HubApiError, match=r"HTTP 40[34]"):  # 404: not even visible
        api.call("GET", f"{url}/hub/api/users/hubfleet-bootstrap/tokens", token=token)
    database = local_hub(load_fleet("fleet"), "local", "staging").directory / "jupyterhub.sqlite"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        left = db.execute(
            "SELECT COUNT(*) FROM api_tokens JOIN users ON api_tokens.user_id = users.id"
            " WHERE users.name = 'hubfleet-bootstrap'"
        ).fetchone()
    assert left == (0,)

    # Deploying again with no change restarts nothing and keeps the token.
    pids = local_hub(load_fleet("fleet"), "local", "staging").pids()
    again = await deploy_hub(cluster="local", hub="staging")
    assert again.action == "unchanged"
    assert local_hub(load_fleet("fleet"), "local", "staging").pids() == pids
    assert (await HubOpsToken.aload("local-staging")).token_id == block.token_id

    report = await check_hub_health(cluster="local", hub="staging")
    assert report.verdict == "healthy"
    assert [p.level for p in report.probes] == ["reachable", "api", "auth"]
    assert report.probes[1].detail.startswith("6.")

    # The token never lands in a file of the hub, nor in a log or artifact of the runs.
    assert scan_for(token, data_dir / "hubs") == []
    logs, artifacts = await all_logs_and_artifacts()
    assert logs and artifacts
    assert all(token not in log.message for log in logs)
    assert all(token not in str(a.data) for a in artifacts)

    # Dry-run teardown changes nothing.
    dry = await teardown_hub(cluster="local", hub="staging", dry_run=True)
    assert dry.dry_run and local_hub(load_fleet("fleet"), "local", "staging").is_running()

    gone = await teardown_hub(cluster="local", hub="staging")
    assert sorted(gone.stopped) == sorted(pids)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert gone.archived and Path(gone.archived).is_dir()
    with pytest.raises(ValueError):
        await HubOpsToken.aload("local-staging")
    with pytest.raises(api.TransientError):
        api.timed_health(url)


async def test_killed_hub_is_down_after_retries(data_dir: Path) -> None:
    result = await deploy_hub(cluster="local", hub="prod")
    state = local_hub(load_fleet("fleet"), "local", "prod").state()
    assert state and state.hub
    os.kill(state.hub.pid, signal.SIGKILL)
    psutil.Process(state.hub.pid).wait(10)

    report = await check_hub_health(cluster="local", hub="prod")
    assert report.verdict == "down"
    assert report.reason.startswith("reachable: GET http://127.0.0.1:")
    assert "503" in report.reason or "connection" in report.reason

    # The run history shows the probe was retried before it counted.
    run = await latest_run("check_hub_health", "hub:local/prod")
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
        )
        probe = next(t for t in task_runs if t.name.startswith("probe-reachable"))
        states = await client.read_task_run_states(probe.id)
    assert probe.run_count == 4  # 1 try + 3 retries
    assert [s.name for s in states].count("AwaitingRetry") == 3
    assert states[-1].is_failed()

    await teardown_hub(cluster="local", hub="prod", keep_data=False)
    assert not hub_dir("prod").exists()
    assert result.health == "healthy"


async def test_dry_run_deploy_changes_nothing(data_dir: Path) -> None:
    result = await deploy_hub(cluster="local", hub="workshop", dry_run=True)
    assert result == HubDeployed(hub="local/workshop", action="start", dry_run=True)
    assert not (hub_dir("workshop") / "state.json").exists()
    assert not local_hub(load_fleet("fleet"), "local", "workshop").is_running()


async def test_cloud_provider_is_refused_cleanly() -> None:
    with pytest.raises(ProviderNotReady, match="Nothing was changed"):
        await deploy_hub(cluster="gcp-central", hub="college")


async def test_unknown_hub_names_the_known_ones() -> None:
    with pytest.raises(
        LookupError, match=r"cluster 'local' has no hub 'nope' \(hubs: staging, prod, workshop\)"
    ):
        await deploy_hub(cluster="local", hub="nope")
