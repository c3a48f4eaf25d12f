"""Every deployment `hubfleet setup` registers runs from a real `hubfleet worker` started in
an empty directory (as on a machine that has no checkout), and a scheduled health sweep
runs on its schedule through that worker, writes the health history and raises the alert.

The module has its own Prefect server (authentication on, as every server hubfleet starts)
and its own copy of the example fleet with only the `local` cluster: a sweep of the whole
example fleet would resolve the cloud hubs' public domain names. Real JupyterHubs, a real
webhook receiver; everything started here is stopped by PID.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleetfiles import copy_example_fleet
from ops_helpers import CREDENTIALS, Workers, run_cli
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from waiting import wait_for
from webhook import Webhook

from deployments.registry import OPERATIONS, resolve
from hubfleet.server import PrefectServer, any_free_port
from tasks.local_hub import LocalHub

POOL = "hubfleet-anywhere"
FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]

#: One run of each deployment: a dry run where the operation changes things.
RUNS: dict[str, dict[str, Any]] = {
    "deploy_hub/default": {"cluster": "local", "hub": "staging"},  # real: the checks need it
    "check_hub_health/default": {"cluster": "local", "hub": "staging"},
    "teardown_hub/default": {"cluster": "local", "hub": "staging", "dry_run": True},
    "deploy_fleet/default": {"selection": ["local"], "dry_run": True},
    "upgrade_fleet/default": {"selection": ["local"], "dry_run": True},
    "detect_drift/default": {},
    "rotate_credentials/default": {"dry_run": True},
    "create_event_hub/default": {"cluster": "local", "hub": "workshop", "dry_run": True},
    "remind_event_organizers/default": {"cluster": "local", "hub": "workshop", "dry_run": True},
    "extend_event_hub/default": {
        "cluster": "local",
        "hub": "workshop",
        "dry_run": True,
        "new_end": "2027-03-18T18:00:00+01:00",
    },
    "sync_event_schedules/default": {"dry_run": True},
    "reap_expired_event_hubs/default": {"dry_run": True},
    "customize_hub/default": {
        "cluster": "local",
        "hub": "staging",
        "admins": ["alice"],
        "dry_run": True,
    },
    "publish_fleet_report/default": {},
    "check_fleet_health/health-shallow": {},
    "check_fleet_health/health-deep": {"depth": "deep", "alert_after": 1},
    "backup_hub/default": {"cluster": "local", "hub": "staging", "dry_run": True},
    "backup_fleet/default": {"dry_run": True},
}
#: Refused by the operation itself, after the worker imported and started it: provisioning
#: needs a cluster with a `terraform:` section (the local one has none, and no cloud can be
#: reached here), an event hub is expired only after its end (the example's is 2027), and
#: a restore needs a backup (the dry runs above write none).
REFUSED = {
    "provision_cluster/default": (
        {"cluster": "local", "dry_run": True},
        "has no 'terraform:' section",
    ),
    "destroy_cluster/default": (
        {"cluster": "local", "dry_run": True},
        "has no 'terraform:' section",
    ),
    "expire_event_hub/default": (
        {"cluster": "local", "hub": "workshop", "dry_run": True},
        "an event hub is expired only after its end",
    ),
    "restore_hub/default": (
        {"cluster": "local", "hub": "staging", "dry_run": True},
        "no verified backup at",
    ),
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def local_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example fleet with only its `local` cluster, committed in a git repository."""
    root = tmp_path_factory.mktemp("anywhere") / "fleet"
    copy_example_fleet(root.parent, root.name)
    for cluster in (root / "clusters").iterdir():
        if cluster.name != "local":
            shutil.rmtree(cluster)
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.org", "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "fleet")
    return root


@pytest.fixture(scope="module")
def anywhere(no_leftover_processes: Path, local_fleet: Path) -> Iterator[str]:
    """A server of its own (the scheduler loops every 5 s so a schedule fires quickly)."""
    server = PrefectServer(
        no_leftover_processes / "anywhere-prefect",
        port=any_free_port(),
        extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"},
    )
    server.ensure()
    CREDENTIALS[server.api_url] = server.credential()
    try:
        yield server.api_url
    finally:
        server.stop()


def setup_cli(api: str, fleet: Path, webhook: Webhook) -> str:
    result = run_cli(
        api, "setup", "--pool", POOL, "--fleet", str(fleet),
        HUBFLEET_FLEET=str(fleet), HUBFLEET_NOTIFY_URL_OPS_WEBHOOK=webhook.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def worker(
    anywhere: str,
    local_fleet: Path,
    webhook: Webhook,
    tmp_path_factory: pytest.TempPathFactory,
    no_leftover_processes: Path,
) -> Iterator[Workers]:
    setup_cli(anywhere, local_fleet, webhook)
    empty = tmp_path_factory.mktemp("empty-cwd")
    workers = Workers(anywhere, tmp_path_factory.mktemp("worker-logs"))
    workers.start("anywhere", pool=POOL, cwd=empty)
    try:
        yield workers
    finally:
        workers.stop_all()
        for state in (no_leftover_processes / "hubs").glob("*/*/state.json"):
            LocalHub(state.parent, state.parent.name).stop()


def client_of(api: str) -> Any:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: CREDENTIALS[api]})


async def run_all(api: str, runs: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Create one run per deployment (as the UI's Run button does), wait for all."""
    with client_of(api):
        async with get_client() as client:
            ids = {}
            for name, parameters in runs.items():
                dep = await client.read_deployment_by_name(name)
                created = await client.create_flow_run_from_deployment(
                    dep.id, parameters=parameters
                )
                ids[name] = created.id
            deadline = time.monotonic() + timeout
            while True:
                found = {name: await client.read_flow_run(i) for name, i in ids.items()}
                if all(r.state and r.state.is_final() for r in found.values()):
                    return found
                if time.monotonic() > deadline:
                    late = {n: r.state.name for n, r in found.items() if not r.state.is_final()}
                    pytest.fail(f"runs not final after {timeout:g}s: {late}")
                await asyncio.sleep(2)


def test_every_deployment_runs_from_a_worker_in_an_empty_directory(
    anywhere: str, worker: Workers
) -> None:
    available = resolve(OPERATIONS)
    registered = {f"{flow.name}/{spec.name}" for spec, flow in available}
    # A new operation must be added here, so it is run from a worker once too.
    assert registered == set(RUNS) | set(REFUSED)

    first = asyncio.run(run_all(anywhere, {"deploy_hub/default": RUNS["deploy_hub/default"]}, 300))
    assert first["deploy_hub/default"].state.name == "Completed", first
    refused = {name: parameters for name, (parameters, _why) in REFUSED.items()}
    rest = {k: v for k, v in {**RUNS, **refused}.items() if k != "deploy_hub/default"}
    found = asyncio.run(run_all(anywhere, rest, 600))
    log = worker.log_path("anywhere").read_text(errors="replace")
    assert "FileNotFoundError" not in log and "No such file or directory" not in log, log[-3000:]
    outcome = {name: (run.state.name, run.state.message or "") for name, run in found.items()}
    for name in RUNS:
        if name in found:
            assert outcome[name][0] == "Completed", (name, outcome[name], log[-3000:])
    for name, (_parameters, why) in REFUSED.items():
        state, message = outcome[name]
        assert state == "Failed" and why in message, (name, state, message)


def test_scheduled_sweep_runs_through_the_worker_and_alerts(
    anywhere: str, worker: Workers, local_fleet: Path, webhook: Webhook
) -> None:
    # local/prod was never deployed here: a deep sweep finds it down and alerts (after 1).
    text = (local_fleet / "fleet.yaml").read_text()
    (local_fleet / "fleet.yaml").write_text(
        text.replace('health_deep: "0 2 * * *"', 'health_deep: "* * * * *"')
    )
    git(
        local_fleet, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qam", "cron"
    )
    assert "updated: deployment check_fleet_health/health-deep" in setup_cli(
        anywhere, local_fleet, webhook
    )

    async def scheduled_run() -> Any:
        with client_of(anywhere):
            async with get_client() as client:
                dep = await client.read_deployment_by_name("check_fleet_health/health-deep")
                # A minutely schedule has up to 100 future runs scheduled: ask for the
                # ones that ended.
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL))
                    ),
                    limit=50,
                )
        done = [r for r in runs if r.auto_scheduled]
        return done[0] if done else None

    try:
        run = wait_for(
            "a scheduled deep sweep to finish", lambda: asyncio.run(scheduled_run()), 300, 3
        )
    except BaseException:
        print(worker.log_path("anywhere").read_text(errors="replace")[-4000:])
        raise
    assert run.state.name == "Completed", run.state
    assert "operator:schedule" in run.tags and "op:check_fleet_health" in run.tags, run.tags

    def alerted() -> list[dict[str, Any]]:
        return [m for m in webhook.received if "local/prod is" in m.get("subject", "")]

    got = wait_for("the hub-unhealthy notification for local/prod", alerted, 120)
    assert "deep sweep(s)" in got[0]["body"], got

    history = run_cli(anywhere, "health", "local/prod", "--since", "1h",
                      HUBFLEET_FLEET=str(local_fleet))  # fmt: skip
    assert history.returncode == 0, history.stdout + history.stderr
    assert "local/prod" in history.stdout and "down" in history.stdout, history.stdout
