"""Faults leave nothing stuck. Real processes, each stopped by PID:

- SIGINT to `hubfleet deploy` mid-deploy: the CLI ends within 10 s, the run is Cancelled,
  the hub's lock is free and the hub answers;
- the Prefect server killed mid-deploy, restarted on its port: the lock the dead deploy held
  frees itself (its lease is on disk), and a rerun converges with no manual step;
- `hubfleet locks` names a holder while a deploy holds the lock, `hubfleet unlock` refuses
  while it runs;
- a worker stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from ops_helpers import CREDENTIALS, HUBFLEET, REPO, Workers, cli_env, run_cli
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort
from waiting import wait_for

from hubfleet.loader import load_fleet
from hubfleet.server import PrefectServer, any_free_port
from tasks.local_hub import local_hub
from tasks.locks import hub_limit

pytestmark = pytest.mark.usefixtures("ops_setup", "stop_hubs")


def start_cli(api: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [HUBFLEET, *args], env=cli_env(api), cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def hub_started(hub: str, cli: subprocess.Popen[str]) -> Any:
    local = local_hub(load_fleet(REPO / "fleet"), "local", hub)

    def check() -> bool:
        if cli.poll() is not None:
            pytest.fail(f"the CLI ended before the hub started: {cli.communicate()}")
        state = local.state()
        return bool(state and state.hub and state.hub.alive())

    return check


async def newest_run(api: str, *tags: str) -> Any:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: CREDENTIALS[api]}):
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags))),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            limit = await client.read_global_concurrency_limit_by_name(hub_limit("local", "prod"))
    return (runs[0] if runs else None), limit.active_slots


def test_sigint_cancels_a_deploy_and_frees_its_lock(ops_api: str) -> None:
    local_hub(load_fleet(REPO / "fleet"), "local", "prod").stop()
    cli = start_cli(ops_api, "deploy", "local", "prod")
    wait_for("the hub to start", hub_started("prod", cli), 180, 0.1)
    sent = time.monotonic()
    cli.send_signal(signal.SIGINT)
    _out, err = cli.communicate(timeout=30)
    took = time.monotonic() - sent
    assert took <= 10, f"the CLI took {took:.1f}s to stop"
    assert cli.returncode != 0 and "Traceback" not in err, err
    assert "SIGINT" in err, err

    run, active = asyncio.run(newest_run(ops_api, "op:deploy_hub", "hub:local/prod"))
    assert run is not None and run.state.name == "Cancelled", run and run.state
    assert active == 0
    again = run_cli(ops_api, "deploy", "local", "prod")
    assert again.returncode == 0, again.stdout + again.stderr
    print(f"SIGINT mid-deploy: CLI stopped in {took:.1f}s, run Cancelled, lock free; "
          f"healthy again {time.monotonic() - sent:.0f}s after the signal")  # fmt: skip
    state = local_hub(load_fleet(REPO / "fleet"), "local", "prod").state()
    assert state is not None
    assert requests.get(f"{state.url}/hub/health", timeout=10).status_code == 200


#: A long healthy operation in another process: holds local/prod's lock until told.
HOLDER = """
import asyncio, sys
from pathlib import Path
from prefect import flow
from tasks.locks import hub_lock

release = Path(sys.argv[1])

@flow(name="hold_hub_lock", flow_run_name="hold_hub_lock local/prod")
async def hold_hub_lock() -> None:
    async with hub_lock("local", "prod"):
        release.with_suffix(".held").touch()
        while not release.exists():
            await asyncio.sleep(0.2)

asyncio.run(hold_hub_lock())
"""


async def test_a_held_lock_names_its_holder_and_unlock_refuses(
    ops_api: str, tmp_path: Path
) -> None:
    script, release = tmp_path / "holder.py", tmp_path / "release"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(release)], env=cli_env(ops_api), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not release.with_suffix(".held").exists():
            assert holder.poll() is None, holder.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the holder never took the lock"
            await asyncio.sleep(0.5)

        locks = await asyncio.to_thread(run_cli, ops_api, "locks")
        assert locks.returncode == 0, locks.stderr
        assert hub_limit("local", "prod") in locks.stdout, locks.stdout
        assert "hold_hub_lock local/prod" in locks.stdout and "Running" in locks.stdout
        refused = await asyncio.to_thread(run_cli, ops_api, "unlock", "local/prod")
        assert refused.returncode == 2 and "has not ended" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr

        # From the CLI, as an operator meets it: its own process, the ops server's settings.
        waited = await asyncio.to_thread(
            run_cli, ops_api, "deploy", "local", "prod", "--lock-wait", "2"
        )
        message = " ".join(waited.stderr.split())
        assert waited.returncode != 0, waited.stdout + waited.stderr
        assert "held by run 'hold_hub_lock local/prod'" in message, waited.stderr
        assert "Running" in message and "Traceback" not in waited.stderr, waited.stderr
    finally:
        release.touch()
        try:
            out = await asyncio.to_thread(holder.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            out = holder.communicate()
    assert holder.returncode == 0, out[0][-3000:]
    assert (await newest_run(ops_api, "op:none"))[1] == 0
    free = await asyncio.to_thread(run_cli, ops_api, "unlock", "local/prod")
    assert free.returncode == 0 and "not locked" in free.stdout, free.stdout + free.stderr


@pytest.fixture
def doomed_server(no_leftover_processes: Path) -> Iterator[PrefectServer]:
    server = PrefectServer(no_leftover_processes / "doomed-prefect", port=any_free_port())
    server.ensure()
    CREDENTIALS[server.api_url] = server.credential()
    try:
        yield server
    finally:
        PrefectServer(server.home).stop()


def test_server_killed_mid_deploy_then_rerun_converges(doomed_server: PrefectServer) -> None:
    api = doomed_server.api_url
    local_hub(load_fleet(REPO / "fleet"), "local", "prod").stop()
    cli = start_cli(api, "deploy", "local", "prod")
    wait_for("the hub to start", hub_started("prod", cli), 180, 0.1)
    pid = doomed_server.pid()
    assert pid is not None
    killed_at = time.monotonic()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        proc.kill()
    psutil.Process(pid).wait(timeout=30) if psutil.pid_exists(pid) else None
    # The CLI cannot finish without its server: the operator stops it (Ctrl-C, twice).
    cli.send_signal(signal.SIGINT)
    try:
        cli.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=15)

    restarted = PrefectServer(doomed_server.home)
    assert restarted.ensure() is False and restarted.port == doomed_server.port
    _run, active = asyncio.run(newest_run(api, "op:deploy_hub", "hub:local/prod"))
    assert active == 1, "the dead deploy's lock should still be taken right after the restart"
    rerun = run_cli(api, "deploy", "local", "prod")
    converged = time.monotonic() - killed_at
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert converged < 240, f"fleet healthy again only {converged:.0f}s after the kill"
    state = local_hub(load_fleet(REPO / "fleet"), "local", "prod").state()
    assert state is not None
    assert requests.get(f"{state.url}/hub/health", timeout=10).status_code == 200
    print(f"server killed mid-deploy: healthy again {converged:.0f}s after the kill")


def test_worker_stops_on_sigterm(ops_api: str, workers: Workers) -> None:
    worker = workers.start("w-sigterm")
    time.sleep(5)
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # as `kill PID` does: the worker alone
    worker.wait(timeout=30)
    assert time.monotonic() - sent <= 10, "the worker took more than 10 s to stop"
