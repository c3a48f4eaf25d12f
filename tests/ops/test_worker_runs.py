"""Runs through the work pool, as from the Prefect UI: real `hubfleet worker` processes,
real JupyterHubs, the real automations of `hubfleet setup`, and the `hubfleet audit` CLI."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

import pytest
import requests
from ops_helpers import CREDENTIALS, REPO, ZOMBIE_AFTER, Workers, run_cli
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.exceptions import PrefectHTTPStatusError
from waiting import wait_for
from webhook import Webhook

from flows.operation import UNKNOWN_UI_OPERATOR
from hubfleet.loader import load_fleet
from tasks.local_hub import local_hub

pytestmark = pytest.mark.usefixtures("ops_setup", "stop_hubs")


async def start_run(deployment: str, parameters: dict[str, Any]) -> UUID:
    """What the UI's Run button does: create a run of the deployment with these values."""
    async with get_client() as client:
        dep = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(dep.id, parameters=parameters)
    return run.id


async def read_run(run_id: UUID) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(run_id)


async def wait_final(run_id: UUID, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = await read_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(1)
    pytest.fail(f"run {run_id} not finished after {timeout:g}s (state {run.state.name})")


async def test_ui_runs_are_audited_with_their_operator(ops_api: str, workers: Workers) -> None:
    workers.start("w-audit")
    ui_run = await start_run("deploy_hub/default", {"cluster": "local", "hub": "staging"})
    # Who ran it cannot be claimed: an operator parameter (a reserved one, or any name) is
    # refused when the run is created, and an operator tag the creator attaches is dropped.
    for claimed in ("schedule", "automation:nightly", "bob", "x" * 20_000):
        with pytest.raises(PrefectHTTPStatusError) as refused:
            await start_run(
                "check_hub_health/default",
                {"cluster": "local", "hub": "prod", "operator": claimed},
            )
        assert "'operator' was unexpected" in str(refused.value), str(refused.value)[:300]
    async with get_client() as client:
        dep = await client.read_deployment_by_name("check_hub_health/default")
        named_run = (
            await client.create_flow_run_from_deployment(
                dep.id,
                parameters={"cluster": "local", "hub": "prod"},
                tags=["operator:schedule"],
            )
        ).id
    ui = await wait_final(ui_run)
    named = await wait_final(named_run)
    assert ui.state.name == "Completed", ui.state.message
    assert named.state.name == "Completed", named.state.message
    for run in (ui, named):
        operators = [t for t in run.tags if t.startswith("operator:")]
        assert operators == [f"operator:{UNKNOWN_UI_OPERATOR}"], run.tags

    result = run_cli(ops_api, "audit", "--hub", "local/staging", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    async with get_client() as client:
        touched = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["hub:local/staging"])),
            limit=200,
        )
    # Exactly the runs that touched the hub: the deploy and the health check inside it.
    assert sorted(r["url"].rsplit("/", 1)[1] for r in rows) == sorted(str(r.id) for r in touched)
    assert {r["target"] for r in rows} == {"local/staging"}
    mine = next(r for r in rows if r["url"].endswith(str(ui_run)))
    assert mine["op"] == "deploy_hub"
    assert mine["operator"] == UNKNOWN_UI_OPERATOR
    assert mine["outcome"] == "Completed"
    assert mine["url"] == f"{ops_api.removesuffix('/api')}/runs/flow-run/{ui_run}"
    assert str(named_run) not in result.stdout  # another hub's run is not listed

    prod = run_cli(ops_api, "audit", "--hub", "local/prod", "--format", "csv", "--since", "1h")
    assert prod.returncode == 0, prod.stderr
    assert f"check_hub_health,local/prod,{UNKNOWN_UI_OPERATOR},Completed" in prod.stdout

    table = run_cli(ops_api, "audit", "--hub", "local/staging", "--op", "deploy_hub")
    assert table.returncode == 0 and UNKNOWN_UI_OPERATOR in table.stdout, table.stdout

    # From the CLI, the operator is the local user or a plain name, never a reserved one.
    for claimed in ("schedule", "unknown(ui/api)", "automation:nightly", "x" * 20_000):
        forged = run_cli(ops_api, "deploy", "local", "staging", "--operator", claimed)
        assert forged.returncode == 2, forged.stdout + forged.stderr
        assert "give a plain name" in forged.stderr and "Traceback" not in forged.stderr
        assert len(forged.stderr) < 1000  # a long value is quoted cut short

    bad = run_cli(ops_api, "audit", "--hub", "local/staging", "--since", "5 days")
    assert bad.returncode == 2
    assert "--since '5 days': use a number and a unit" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_failed_operation_notifies_webhook_once(workers: Workers, webhook: Webhook) -> None:
    workers.start("w-notify")
    fleet = load_fleet(REPO / "fleet")
    remote = next(c for c in fleet.clusters if c.provider.value != "local" and c.hubs)
    run_id = await start_run(
        "deploy_hub/default", {"cluster": remote.name, "hub": remote.hubs[0].name}
    )
    run = await wait_final(run_id)
    assert run.state.name == "Failed", run.state

    def mine() -> list[dict[str, Any]]:
        return [m for m in webhook.received if str(run_id) in m.get("body", "")]

    wait_for("the failure notification", mine, timeout=90)
    time.sleep(10)  # a second (duplicate) notification would arrive within this
    assert len(mine()) == 1, mine()
    body = mine()[0]["body"]
    assert f"/runs/flow-run/{run_id}" in body
    assert "Failed" in body and "deploy_hub" in body


async def test_killed_worker_run_crashes_then_rerun_converges(
    workers: Workers, data_dir: Any
) -> None:
    prod = local_hub(load_fleet(REPO / "fleet"), "local", "prod")
    prod.stop()  # an earlier test may have left it running (or its state, stopped)
    worker = workers.start("w-doomed")
    run_id = await start_run("deploy_hub/default", {"cluster": "local", "hub": "prod"})

    # Mid-run: the hub's processes are up (its state names a live hub), the deploy not done.
    def hub_started() -> bool:
        state = prod.state()
        return bool(state and state.hub and state.hub.alive())

    wait_for("the hub to start", hub_started, 180, 0.1)
    workers.kill_hard(worker)
    killed_at = time.monotonic()
    run = await read_run(run_id)
    assert run.state.name == "Running", f"the run ended before the kill: {run.state}"

    crashed = await wait_final(run_id, timeout=ZOMBIE_AFTER.total_seconds() + 90)
    assert crashed.state.name == "Crashed", crashed.state
    assert "No heartbeat" in (crashed.state.message or "")

    workers.start("w-rescue")
    # The dead run still holds the hub's lock (tasks/locks.py): Prefect frees a concurrency
    # slot when its lease (LEASE_SECONDS, renewed only by a live run) expires, so the re-run
    # waits for that, by design: nobody can tell a dead holder from a slow one sooner.
    again = await wait_final(
        await start_run("deploy_hub/default", {"cluster": "local", "hub": "prod"}),
        timeout=300 + 240,
    )
    assert again.state.name == "Completed", again.state.message
    # Converged: the hub answers, and the processes the crashed run left are the hub's.
    state = local_hub(load_fleet(REPO / "fleet"), "local", "prod").state()
    assert state is not None
    assert requests.get(f"{state.url}/hub/health", timeout=10).status_code == 200
    print(f"worker SIGKILLed mid-deploy: run Crashed, re-run Completed, hub healthy "
          f"{time.monotonic() - killed_at:.0f}s after the kill")  # fmt: skip


async def test_a_run_an_automation_starts_is_tagged_with_the_automation(
    ops_api: str, workers: Workers
) -> None:
    """An automation (a real one: event trigger, run-deployment action, the server's own
    trigger service) starts a health check; the run records `operator:automation:<name>`
    from the server's `created_by` (flows/operation.py)."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    workers.start("w-automation")
    auth = tuple(CREDENTIALS[ops_api].split(":", 1))
    HUB_RESOURCE = "hubfleet.hub.local/prod"
    name = "hubfleet-test: recheck on request"
    async with get_client() as client:
        dep = await client.read_deployment_by_name("check_hub_health/default")
        for old in await client.read_automations_by_name(name):
            await client.delete_automation(old.id)
    automation = await Automation(
        name=name,
        trigger=EventTrigger(
            expect={"hubfleet.test.recheck"},
            match={"prefect.resource.id": HUB_RESOURCE},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=dep.id,
                parameters={"cluster": "local", "hub": "prod"},
            )
        ],
    ).acreate()
    try:
        deadline = time.monotonic() + 120
        run = None
        while run is None and time.monotonic() < deadline:
            # Re-emitted until a run exists: the trigger service loads new automations
            # within seconds, and an event before that is not matched.
            # Posted to the ops server's events API: this process's event client is a
            # singleton bound to whichever server the first test that emitted used.
            event = {
                "id": str(uuid4()),
                "occurred": datetime.now(UTC).isoformat(),
                "event": "hubfleet.test.recheck",
                "resource": {"prefect.resource.id": HUB_RESOURCE},
            }
            posted = requests.post(f"{ops_api}/events", json=[event], auth=auth, timeout=30)
            assert posted.status_code == 204, posted.text
            time.sleep(3)
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    limit=50,
                )
            run = next(
                (r for r in runs if r.created_by and r.created_by.type == "AUTOMATION"), None
            )
        assert run is not None, "the automation started no run within 120 s"
        done = await wait_final(run.id)
    finally:
        async with get_client() as client:
            await client.delete_automation(automation.id)
    operators = [t for t in done.tags if t.startswith("operator:")]
    assert operators == [f"operator:automation:{name}"], done.tags
