"""Every fleet operation has a command (issue 16): the real `hubfleet` CLI against the ops
server, on the example fleet's `local` cluster (real JupyterHub processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ops_helpers import REPO, Workers, run_cli
from test_faults import newest_run
from waiting import wait_for

from hubfleet.loader import load_fleet
from tasks.local_hub import local_hub

HUBS = ("staging", "prod", "workshop")


def _ok(result: object) -> str:
    out = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 0, out  # type: ignore[attr-defined]
    assert "Traceback" not in out, out
    return out


@pytest.mark.usefixtures("stop_hubs")
def test_fleet_operations_from_the_cli(ops_api: str) -> None:
    fleet = load_fleet(REPO / "fleet")
    for hub in HUBS:
        local_hub(fleet, "local", hub).stop()

    plan = _ok(run_cli(ops_api, "deploy-fleet", "local", "--dry-run"))
    assert "planned changes" in plan and "dry run: nothing was changed" in plan
    assert all(f"│ {hub}" in plan for hub in HUBS), plan
    assert not any(local_hub(fleet, "local", hub).is_running() for hub in HUBS)

    deployed = _ok(run_cli(ops_api, "deploy-fleet", "local", USER="hubfleet-tests"))
    assert all(f"local/{hub}" in deployed for hub in HUBS), deployed
    assert deployed.count("│ deployed") == 3, deployed
    run, _ = asyncio.run(newest_run(ops_api, "op:deploy_fleet"))
    assert run is not None and run.state.name == "Completed"
    assert "operator:hubfleet-tests" in run.tags, run.tags

    swept = _ok(run_cli(ops_api, "check-fleet-health", "local", "--depth", "deep"))
    assert '"healthy": 3' in swept, swept

    local_hub(fleet, "local", "prod").stop()
    down = run_cli(ops_api, "check-fleet-health", "local/prod")
    assert down.returncode == 1, down.stdout + down.stderr
    assert "1 hub(s) not healthy" in down.stderr and "local/prod" in down.stdout
    assert "Traceback" not in down.stderr

    values = REPO / "fleet" / "clusters" / "local" / "prod.values.yaml"
    before = values.read_text()
    patch = _ok(run_cli(ops_api, "customize-hub", "local", "prod", "--admin", "alice", "--dry-run"))
    assert "+        - alice" in patch and "dry run: nothing was changed" in patch, patch
    assert values.read_text() == before

    support = run_cli(ops_api, "deploy-support", "local")
    assert support.returncode == 2, support.stdout + support.stderr
    assert "is a local cluster" in support.stderr and "Traceback" not in support.stderr

    report = _ok(run_cli(ops_api, "publish-fleet-report", "--since", "1h"))
    assert "published: artifact 'fleet-ops-report'" in report


def test_fleet_commands_refuse_bad_input_and_explain(ops_api: str, tmp_path: Path) -> None:
    unknown = run_cli(ops_api, "deploy-fleet", "nosuch")
    assert unknown.returncode == 2
    assert "fleet has no cluster 'nosuch'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    gate = run_cli(ops_api, "upgrade-fleet", "--gate", "bogus")
    assert gate.returncode == 2 and "'bogus' is not one of" in gate.stderr
    helped = run_cli(ops_api, "check-fleet-health", "--help")
    assert helped.returncode == 0 and "alert-after" in helped.stdout


def test_status_shows_the_operating_picture(ops_api: str, ops_setup: str, workers: Workers) -> None:
    """`hubfleet status` after `hubfleet setup` with a worker: the hubs, the next scheduled
    sweeps, and the worker (it registers with its first heartbeat)."""
    workers.start("w-status")

    def shown() -> str | None:
        result = run_cli(ops_api, "status")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return result.stdout if "w-status" in result.stdout else None

    out = wait_for("the worker in `hubfleet status`", shown, timeout=120, every=3)
    assert "hubs (last sweep verdicts)" in out and "│ local/prod" in out, out
    assert "check_fleet_health/health-shallow" in out, out  # scheduled every 15 minutes
    assert "next scheduled runs" in out and "workers" in out
