"""A shallow sweep of more hubs than one page of tokens: one task run for the cluster, each
hub probed with its own token, each hub's outcome in the sweep's table.

Real Prefect server; the hubs are the health benchmark's loopback simulator
(`benchmarks/bench_health_sweep.py --serve N`, a separate process answering like N hubs,
each with its own token): 250 real JupyterHubs cannot run on the test machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from pydantic import SecretStr

from blocks.hub_token import HubOpsToken
from flows.check_fleet_health import TOKEN_PAGE, check_fleet_health
from hubfleet.results import HealthSweep

pytestmark = pytest.mark.usefixtures("prefect_server")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_health_sweep import behaviour  # noqa: E402 - the simulator's hubs

N = 250  # more than one page of tokens (TOKEN_PAGE)
#: This hub's block names another hub in its `hub` field: the sweep must not use it.
MISFILED = 5


@pytest.fixture
def many_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    root = tmp_path / "fleet"
    shutil.copytree(REPO / "fleet", root)
    (root / "clusters" / "many").mkdir()
    hubs = "".join(
        f"  - {{name: m{i:03d}, domain: m{i:03d}.many.hubfleet.test, tier: prod, kind: standing}}\n"
        for i in range(N)
    )
    (root / "clusters" / "many" / "cluster.yaml").write_text(
        f"name: many\nprovider: local\nlocal: {{}}\nhubs:\n{hubs}"
    )
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    return root


@pytest.fixture
def simulator() -> Any:
    sim = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "bench_health_sweep.py"), "--serve", str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        yield json.loads(sim.stdout.readline())
    finally:
        sim.terminate()
        sim.wait(10)


async def store_tokens(ports: list[int], data_dir: Path) -> None:
    """Each hub's local state (its port) and its token block, as deploy_hub leaves them."""
    for i, port in enumerate(ports):
        d = data_dir / "hubs" / "many" / f"m{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "state.json").write_text(
            json.dumps(
                {"ports": {"public": port, "proxy_api": 1, "hub": 1}, "hub": None, "proxy": None}
            )
        )

    def block(i: int) -> HubOpsToken:
        return HubOpsToken(
            hub="many/m000" if i == MISFILED else f"many/m{i:03d}",
            url=f"http://127.0.0.1:{ports[i]}",
            token_id="sim",
            token=SecretStr(behaviour(i)["token"]),
            created_at=datetime.now(UTC),
        )

    await block(0).asave(HubOpsToken.block_name("many", "m000"), overwrite=True)
    fields = {"name", "block_schema_id", "block_type_id", "data", "is_anonymous"}
    async with get_client() as client:
        for i in range(1, N):
            doc = block(i)._to_block_document(
                name=HubOpsToken.block_name("many", f"m{i:03d}"),
                block_schema_id=HubOpsToken._block_schema_id,
                block_type_id=HubOpsToken._block_type_id,
                include_secrets=True,
            )
            await client.create_block_document(
                BlockDocumentCreate(**doc.model_dump(include=fields))
            )


async def test_a_sweep_of_many_hubs_is_one_task_and_keeps_every_hubs_outcome(
    many_fleet: Path, simulator: list[int], data_dir: Path
) -> None:
    assert N > TOKEN_PAGE
    await store_tokens(simulator, data_dir)
    result = await check_fleet_health(
        selection=["many"], retries=3, backoff=0.05, timeout=5.0, alert_after=1
    )
    assert isinstance(result, HealthSweep) and result.hubs == N and result.depth == "shallow"
    assert sum(result.counts.values()) == N

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["cluster:many"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [runs[0].id]})  # type: ignore[arg-type]
        )
        table = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["health-sweep-shallow"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    # One task run probed the whole cluster (not one per hub), and the run is tagged.
    assert [t.name for t in tasks] == ["probe-hubs-many"], [t.name for t in tasks]
    assert {"op:check_fleet_health", "depth:shallow"} <= set(runs[0].tags), runs[0].tags

    # Every hub has its row, once, with its own outcome.
    rows = {r["hub"]: r for r in json.loads(table[0].data)}
    assert len(rows) == N and set(rows) == {f"many/m{i:03d}" for i in range(N)}
    for i in range(N):
        b, row = behaviour(i), rows[f"many/m{i:03d}"]
        if b["down"]:
            assert row["verdict"] == "down", row
        elif i == MISFILED or b["refuses"]:
            # no token of its own (the misfiled block is refused), or the hub refuses it
            assert row["verdict"] != "healthy" and row["level"] == "auth", row
        elif not b["flaky"]:
            # healthy through auth: the hub accepted this hub's own token
            assert row["verdict"] == "healthy", row
    unhealthy = {r["hub"] for r in result.unhealthy}
    assert unhealthy == {h for h, r in rows.items() if r["verdict"] != "healthy"}
    assert set(result.alerted) == unhealthy  # alert_after=1: each alerts on its first failure
