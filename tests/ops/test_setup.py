"""`hubfleet setup` against a real Prefect server: idempotent, deployments with the fleet's
schedules and enums, and the server rejecting bad parameters by field name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ops_helpers import POOL, REPO, cli_env, run_cli
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError
from waiting import wait_for
from webhook import Webhook

from deployments.registry import OPERATIONS, OperationSpec, resolve
from deployments.setup import (
    DRIFT_AUTOMATION,
    NOTIFY_AUTOMATION,
    ZOMBIE_AUTOMATION,
    SetupError,
    setup,
)
from hubfleet.loader import load_fleet

pytestmark = pytest.mark.usefixtures("ops_setup")


async def test_setup_twice_creates_everything_once(ops_api: str, ops_setup: str) -> None:
    assert "created: work pool hubfleet-test" in ops_setup
    assert "created: automation 'hubfleet: crash zombie runs'" in ops_setup

    again = run_cli(ops_api, "setup", "--pool", POOL, "--zombie-after", "45")
    assert again.returncode == 0, again.stderr
    assert " 0 created, 0 updated," in again.stdout, again.stdout

    available = resolve(OPERATIONS)
    assert {spec.entrypoint for spec, _ in available} >= {
        "flows.deploy_hub:deploy_hub",
        "flows.check_hub_health:check_hub_health",
        "flows.teardown_hub:teardown_hub",
    }
    async with get_client() as client:
        pool = await client.read_work_pool(POOL)
        assert pool.type == "process"
        for spec, flow in available:
            deployment = await client.read_deployment_by_name(f"{flow.name}/{spec.name}")
            assert deployment.work_pool_name == POOL
            assert deployment.enforce_parameter_schema
            assert f"op:{flow.name}" in deployment.tags
            cron = spec.cron(load_fleet(REPO / "fleet"))
            assert [getattr(s.schedule, "cron", None) for s in deployment.schedules] == (
                [cron] if cron else []
            )
        for name in (
            ZOMBIE_AUTOMATION,
            NOTIFY_AUTOMATION.format(block="ops-webhook"),
            DRIFT_AUTOMATION.format(block="ops-webhook"),
        ):
            assert len(await client.read_automations_by_name(name)) == 1, name
        limits = {limit.name for limit in await client.read_global_concurrency_limits(limit=200)}
        assert {"hubfleet.cluster.local", "hubfleet.hub.local.staging"} <= limits


async def test_run_form_schema_has_fleet_enums_and_titles() -> None:
    fleet = load_fleet(REPO / "fleet")
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("deploy_hub/default")
    props = deployment.parameter_openapi_schema["properties"]
    assert props["cluster"]["enum"] == sorted(c.name for c in fleet.clusters)
    assert "staging" in props["hub"]["enum"]
    assert props["cluster"]["title"] == "Cluster"
    # Who ran it comes from how the run was created: no operator field, no unknown fields.
    assert "operator" not in props
    assert deployment.parameter_openapi_schema["additionalProperties"] is False
    assert deployment.parameter_openapi_schema["required"] == ["cluster", "hub"]


@pytest.mark.parametrize(
    ("parameters", "field", "value"),
    [
        ({"cluster": "atlantis", "hub": "staging"}, "cluster", "atlantis"),
        ({"cluster": "local", "hub": "no-such-hub"}, "hub", "no-such-hub"),
        # A hub of another cluster: the chosen cluster's hubs are the allowed ones.
        ({"cluster": "aws-west", "hub": "prod"}, "hub", "not one of ['research', 'staging']"),
        ({"cluster": "local", "hub": "staging", "dry_run": "maybe"}, "dry_run", "maybe"),
        # Bounds of flows/parameters.py, enforced by the server before a run exists.
        ({"cluster": "local", "hub": "staging", "lock_timeout": -5}, "lock_timeout", "-5"),
        ({"cluster": "local", "hub": "staging", "wait_timeout": "1y"}, "wait_timeout", "1y"),
        # A parameter the operation does not have (it used to crash the run later).
        ({"cluster": "local", "hub": "staging", "bogus": 1}, "bogus", "unexpected"),
    ],
)
async def test_bad_parameters_are_rejected_naming_the_field(
    parameters: dict[str, object], field: str, value: str
) -> None:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("deploy_hub/default")
        # This deployment's runs only: the scheduler adds other deployments' runs meanwhile.
        of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        before = await client.read_flow_runs(deployment_filter=of_it, limit=200)
        with pytest.raises(PrefectHTTPStatusError) as caught:
            await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        after = await client.read_flow_runs(deployment_filter=of_it, limit=200)
    detail = caught.value.response.text
    assert caught.value.response.status_code == 409
    assert f"'{field}'" in detail and value in detail, detail
    assert len(after) == len(before), "a rejected run must not be created"


async def test_schedules_come_from_fleet_yaml(tmp_path: Path) -> None:
    """A scheduled entry takes its cron from fleet.yaml; changing it there updates it."""
    scheduled = (
        OperationSpec(
            "flows.check_hub_health:check_hub_health",
            name="scheduled-test",
            schedule="health_shallow",
            schedule_parameters={"cluster": "local", "hub": "staging"},
        ),
    )
    fleet_copy = tmp_path / "fleet"
    shutil.copytree(REPO / "fleet", fleet_copy)
    async with get_client() as client:
        try:
            first = await setup(client, load_fleet(REPO / "fleet"), pool=POOL, registry=scheduled)
            assert "deployment check_hub_health/scheduled-test" in first.created
            fleet_yaml = fleet_copy / "fleet.yaml"
            fleet_yaml.write_text(fleet_yaml.read_text().replace('"*/15 * * * *"', '"*/5 * * * *"'))
            second = await setup(client, load_fleet(fleet_copy), pool=POOL, registry=scheduled)
            assert "deployment check_hub_health/scheduled-test" in second.updated
            deployment = await client.read_deployment_by_name("check_hub_health/scheduled-test")
            assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
                ("*/5 * * * *", "UTC")
            ]
            assert deployment.schedules[0].parameters == {"cluster": "local", "hub": "staging"}
        finally:
            found = await client.read_deployment_by_name("check_hub_health/scheduled-test")
            await client.delete_deployment(found.id)


async def test_scheduled_entry_without_required_parameters_changes_nothing() -> None:
    bad = (
        OperationSpec(
            "flows.check_hub_health:check_hub_health", name="bad", schedule="health_deep"
        ),
    )
    async with get_client() as client:
        before = await client.read_deployments()
        with pytest.raises(SetupError, match="required parameter\\(s\\) cluster, hub"):
            await setup(client, load_fleet(REPO / "fleet"), pool=POOL, registry=bad)
        assert len(await client.read_deployments()) == len(before)


def test_setup_user_errors_exit_2_without_traceback(ops_api: str) -> None:
    result = run_cli(ops_api, "setup", "--pool", POOL, "--heartbeat", "5")
    assert result.returncode == 2
    assert "heartbeat_seconds=5: Prefect's minimum is 30" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_kubernetes_work_pool_template_is_accepted() -> None:
    """The Kubernetes base job template (from prefect-kubernetes 0.8.0's default, with
    hubfleet's env) is accepted by a real server as a `kubernetes` pool. No Kubernetes
    worker runs here: this proves the template's shape, not a job in a cluster."""
    import json

    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO / "deployments" / "kubernetes-work-pool.json").read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    async with get_client() as client:
        pool = await client.create_work_pool(
            WorkPoolCreate(name="hubfleet-k8s-test", type="kubernetes", base_job_template=template)
        )
        try:
            assert pool.base_job_template["job_configuration"]["env"] == "{{ env }}"
        finally:
            await client.delete_work_pool("hubfleet-k8s-test")


async def test_drift_reaches_the_notify_blocks(ops_api: str, webhook: Webhook) -> None:
    """`hubfleet setup` routes `hubfleet.cluster.drifted` to the fleet's notify blocks: the
    event `detect_drift` emits for a drifted cluster (`announce_drift`, the flow's own code,
    here in a process of its own pointed at the ops server; tests/terraform shows the flow
    emitting it against real terraform) goes through the ops server's real automation
    engine to the notification block and arrives at a webhook."""
    import subprocess
    import sys
    import uuid

    cluster = f"drift{uuid.uuid4().hex[:6]}"
    emit = (
        "from flows.detect_drift import announce_drift\n"
        "from tasks.terraform import PlanSummary\n"
        f"announce_drift(PlanSummary(cluster={cluster!r}, update=['terraform_data.core_pool'],"
        " destroy=['terraform_data.extra']), revision='abc1234')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", emit],
        env=cli_env(ops_api),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    def mine() -> list[dict]:
        return [m for m in webhook.received if cluster in m.get("subject", "")]

    wait_for("the drift notification", mine, timeout=90)
    (message,) = mine()
    assert message["subject"] == f"hubfleet: cluster {cluster} drifted from its Terraform"
    body = message["body"]
    assert "0 to create, 1 to update, 0 to replace, 1 to destroy" in body
    assert "Update: terraform_data.core_pool" in body
    assert "Destroy: terraform_data.extra" in body
    assert "Fleet revision: abc1234" in body
