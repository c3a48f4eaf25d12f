"""provision_cluster, detect_drift and destroy_cluster with real terraform (the offline
`testing` module of built-in terraform_data resources) on a real Prefect server.

Approvals are given the way the UI gives them: the test finds the paused run through the
API and resumes it with run input (`approve`, `reason`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import aresume_flow_run

from blocks.cluster_access import ClusterAccess
from flows.destroy_cluster import ClusterInUse, destroy_cluster
from flows.detect_drift import DRIFT_EVENT, detect_drift
from flows.provision_cluster import provision_cluster
from hubfleet.paths import data_dir
from hubfleet.results import Drift
from tasks.locks import cluster_limit

pytestmark = pytest.mark.timeout(300)


async def runs_of(cluster: str, state: StateType | None = None) -> list[Any]:
    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"cluster:{cluster}"]))
    if state:
        flow_filter.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))
    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=flow_filter)


async def answer_approval(cluster: str, approve: bool, reason: str) -> UUID:
    """Wait for the cluster's run to pause, then resume it with the reviewer's input."""
    for _ in range(300):
        paused = await runs_of(cluster, StateType.PAUSED)
        if paused:
            run = paused[0]
            await aresume_flow_run(run.id, run_input={"approve": approve, "reason": reason})
            return run.id
        await asyncio.sleep(0.2)
    raise AssertionError(f"no run of {cluster} paused for approval")


async def with_approval(flow_call: Any, cluster: str, approve: bool, reason: str) -> Any:
    running = asyncio.ensure_future(flow_call)
    try:
        await answer_approval(cluster, approve, reason)
        return await running
    finally:
        if not running.done():
            running.cancel()


def state_file(cluster: str) -> Path:
    return data_dir() / "terraform" / cluster / "terraform.tfstate"


def resources(cluster: str) -> dict[str, dict[str, Any]]:
    state = json.loads(state_file(cluster).read_text())
    return {
        f"{r['type']}.{r['name']}" + (f'["{i["index_key"]}"]' if "index_key" in i else ""): i
        for r in state["resources"]
        if r["mode"] == "managed"
        for i in r["instances"]
    }


def edit_out_of_band(cluster: str, address: str, **changes: Any) -> None:
    """Someone changed a resource by hand (console, CLI): its recorded attributes move."""
    path = state_file(cluster)
    state = json.loads(path.read_text())
    state["serial"] += 1
    for r in state["resources"]:
        if f"{r['type']}.{r['name']}" == address:
            for inst in r["instances"]:
                inst["attributes"]["input"]["value"] |= changes
                inst["attributes"]["output"]["value"] |= changes
    path.write_text(json.dumps(state))


async def drift_events(cluster: str) -> list[Any]:
    """The drift events of one cluster (the server writes events asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[DRIFT_EVENT]),
        resource=EventResourceFilter(id=[f"hubfleet.cluster.{cluster}"]),
    )
    for _ in range(50):
        async with get_client() as client:
            # limit: the client's default (100) is above what the server accepts (50).
            page = await client.read_events(flt, limit=50)
        if page.events:
            return list(page.events)
        await asyncio.sleep(0.2)
    return []


async def everything_recorded(cluster: str) -> str:
    """Logs, artifacts and parameters of every run on this cluster, as one text."""
    runs = await runs_of(cluster)
    async with get_client() as client:
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            LogFilter,
            LogFilterFlowRunId,
        )

        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])
            )
        )
    return "\n".join(
        [json.dumps(r.parameters) for r in runs]
        + [log.message for log in logs]
        + [json.dumps(a.data) + str(a.description) for a in artifacts]
    )


async def test_plan_apply_drift_and_approval(lab_fleet: Any) -> None:
    cluster = lab_fleet.name
    lab_fleet(terraform="  module: testing\n  testing:\n    core_node_count: 2\n")

    # plan: an artifact, no state, nothing applied.
    planned = await provision_cluster(cluster, action="plan", operator="alice")
    assert planned.applied is False
    assert set(planned.plan.create) >= {"terraform_data.this", "terraform_data.core_pool"}
    assert not state_file(cluster).exists() or not resources(cluster)
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    plan_md = next(a for a in artifact if a.key == f"plan-{cluster}")
    assert "to create" in plan_md.data and "`terraform_data.core_pool`" in plan_md.data

    # apply: only creates, so no approval; outputs, access block, concurrency limit.
    applied = await provision_cluster(cluster, action="apply", operator="alice")
    assert applied.applied is True and applied.needs_approval is False
    assert (
        resources(cluster)["terraform_data.core_pool"]["attributes"]["input"]["value"]["node_count"]
        == 2
    )
    assert applied.outputs["cluster_endpoint"] == f"https://{cluster}.lab-1.testing.invalid"
    assert "cluster_token" not in applied.outputs  # sensitive: only in the block
    access = await ClusterAccess.for_cluster(cluster)
    kubeconfig = access.kubeconfig.get_secret_value()
    assert access.server == applied.outputs["cluster_endpoint"]
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(cluster_limit(cluster))
    assert limit.limit >= 1
    tags = (await runs_of(cluster))[0].tags
    assert {"op:provision_cluster", f"cluster:{cluster}", "operator:alice"} <= set(tags)

    # Nothing changed out of band yet: in sync. Then someone scales the pool by hand.
    rows = (await detect_drift()).clusters
    assert next(r for r in rows if r.cluster == cluster).status is Drift.in_sync
    edit_out_of_band(cluster, "terraform_data.core_pool", node_count=5)
    rows = (await detect_drift()).clusters
    row = next(r for r in rows if r.cluster == cluster)
    assert row.status is Drift.drifted and "terraform_data.core_pool" in row.changes
    events = await drift_events(cluster)
    assert events and events[0].payload["update"] == ["terraform_data.core_pool"]

    # A replacing change (new location) pauses; a rejection changes nothing.
    lab_fleet(
        terraform="  module: testing\n  testing:\n    core_node_count: 2\n    location: lab-2\n"
    )
    before = resources(cluster)["terraform_data.this"]["attributes"]["id"]
    rejected = await with_approval(
        provision_cluster(cluster, action="apply", operator="bob"), cluster, False, "not now"
    )
    assert rejected.needs_approval is True
    assert "terraform_data.this" in rejected.plan.replace
    assert (rejected.approved, rejected.reason, rejected.applied) == (False, "not now", False)
    assert resources(cluster)["terraform_data.this"]["attributes"]["id"] == before

    approved = await with_approval(
        provision_cluster(cluster, action="apply", operator="bob"), cluster, True, "window ok"
    )
    assert approved.approved is True and approved.applied is True
    after = resources(cluster)
    assert after["terraform_data.this"]["attributes"]["id"] != before
    # The apply also undid the hand edit: the pool is back at what the registry says.
    assert after["terraform_data.core_pool"]["attributes"]["input"]["value"]["node_count"] == 2
    assert approved.outputs["cluster_endpoint"].endswith(".lab-2.testing.invalid")

    # The secrets terraform produced are in the block, and nowhere in the run history.
    new_kubeconfig = (await ClusterAccess.for_cluster(cluster)).kubeconfig.get_secret_value()
    assert new_kubeconfig != kubeconfig
    import yaml

    for config in (kubeconfig, new_kubeconfig):
        parsed = yaml.safe_load(config)
        secrets = [
            parsed["users"][0]["user"]["token"],
            parsed["clusters"][0]["cluster"]["certificate-authority-data"],
        ]
        recorded = await everything_recorded(cluster)
        assert "stored cluster access" in recorded  # the scan sees the run history
        for secret in secrets:
            assert secret not in recorded
    # Saved plans hold secrets in clear text: no run directory is left behind.
    assert list((data_dir() / "terraform" / cluster / "runs").iterdir()) == []


async def test_dry_run_apply_changes_nothing(lab_fleet: Any) -> None:
    cluster = lab_fleet.name
    lab_fleet()
    result = await provision_cluster(cluster, action="apply", dry_run=True)
    assert result.applied is False and result.plan.create
    assert not state_file(cluster).exists() or not resources(cluster)


async def test_destroy_refused_while_hubs_listed(lab_fleet: Any) -> None:
    cluster = lab_fleet.name
    lab_fleet(
        hubs="hubs:\n"
        "  - {name: alpha, domain: alpha.lab.hubfleet.test, tier: staging, kind: standing}\n"
        "  - {name: beta, domain: beta.lab.hubfleet.test, tier: prod, kind: standing}\n"
    )
    with pytest.raises(ClusterInUse, match=r"still has hubs in the fleet: alpha, beta"):
        await destroy_cluster(cluster)


async def test_destroy_asks_approval_and_reports_data_stores(lab_fleet: Any) -> None:
    cluster = lab_fleet.name
    lab_fleet()
    await provision_cluster(cluster, action="apply")
    assert resources(cluster)

    dry = await destroy_cluster(cluster, dry_run=True)
    assert dry.destroyed is False
    assert dry.data_stores == [f"testing://{cluster}-hub-exports"]
    assert "terraform_data.exports_bucket" in dry.plan.destroy

    kept = await with_approval(destroy_cluster(cluster), cluster, False, "users still there")
    assert kept.destroyed is False and resources(cluster)

    gone = await with_approval(destroy_cluster(cluster), cluster, True, "decommissioned")
    assert gone.destroyed is True and not resources(cluster)
    with pytest.raises(Exception, match="no cluster access stored"):
        await ClusterAccess.for_cluster(cluster)
