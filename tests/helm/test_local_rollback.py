"""The local provider's deploy/rollback contract, with real JupyterHub processes: a config
that does not start is replaced by the previous one, which serves again."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from flows.deploy_fleet import deploy_fleet
from flows.deploy_hub import HubRolledBack, deploy_hub
from hubfleet.loader import load_fleet
from hubfleet.results import Outcome
from tasks.local_hub import PREVIOUS_CONFIG, local_hub

pytestmark = pytest.mark.usefixtures("prefect_server")


def local_fleet(root: Path) -> Path:
    (root / "clusters" / "lrb").mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: local-rollback\n")
    (root / "clusters" / "lrb" / "cluster.yaml").write_text(
        "name: lrb\nprovider: local\nlocal: {}\nhubs:\n"
        "  - {name: solo, domain: solo.lrb.hubfleet.test, tier: prod, kind: standing, "
        "values: [solo.values.yaml]}\n"
    )
    (root / "clusters" / "lrb" / "solo.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {concurrent_spawn_limit: 7}}}}\n"
    )
    return root


async def test_failed_start_restores_previous_config(tmp_path: Path, monkeypatch) -> None:
    root = local_fleet(tmp_path / "fleet")
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    first = await deploy_hub(cluster="lrb", hub="solo")
    assert first.health == "healthy"
    hub = local_hub(load_fleet(root), "lrb", "solo")
    good_config = hub.config_file.read_text()

    # A config JupyterHub refuses at start (an unknown database URL scheme).
    (root / "clusters" / "lrb" / "solo.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {db_url: 'nonsense://nowhere'}}}}\n"
    )
    with pytest.raises(HubRolledBack, match="restarted with the previous config"):
        await deploy_hub(cluster="lrb", hub="solo")
    assert hub.is_running()
    assert hub.config_file.read_text() == good_config
    assert (hub.directory / PREVIOUS_CONFIG).read_text() == good_config
    state = hub.state()
    assert state is not None
    assert requests.get(f"{state.url}/hub/health", timeout=5).status_code == 200
    assert state.url == first.url  # same ports: users' URL did not move


async def test_hub_killed_during_the_health_gate_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new config whose hub dies right after it started (killed by PID, as a crash
    would) fails the gate, and the previous config serves again."""
    root = local_fleet(tmp_path / "fleet")
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    first = await deploy_hub(cluster="lrb", hub="solo")
    hub = local_hub(load_fleet(root), "lrb", "solo")
    good_config = hub.config_file.read_text()
    old = hub.state()
    assert old is not None and old.hub is not None
    (root / "clusters" / "lrb" / "solo.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {concurrent_spawn_limit: 9}}}}\n"
    )

    killed: list[int] = []

    def kill_the_new_hub() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = hub.state()
            if state and state.hub and state.hub.pid != old.hub.pid and state.hub.alive():
                os.kill(state.hub.pid, signal.SIGKILL)
                killed.append(state.hub.pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_new_hub, daemon=True)
    started = time.monotonic()
    killer.start()
    with pytest.raises(HubRolledBack, match="previous config"):
        await deploy_hub(cluster="lrb", hub="solo")
    killer.join(timeout=10)
    assert killed, "the new hub was never seen running"
    assert hub.config_file.read_text() == good_config
    state = hub.state()
    assert state is not None and state.url == first.url
    assert requests.get(f"{state.url}/hub/health", timeout=5).status_code == 200
    print(f"hub killed during the gate: rolled back, previous hub healthy "
          f"{time.monotonic() - started:.0f}s after the deploy began")  # fmt: skip


async def test_fleet_run_records_a_rollback_as_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy_fleet learns a hub was rolled back from the subflow's exception type (its
    outcome is a field), not from the words of its message. (A hub with nothing to go back
    to is `failed`: tests/helm/test_kube_deploy.py's staging hub.)"""
    root = local_fleet(tmp_path / "fleet")
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    assert (await deploy_hub(cluster="lrb", hub="solo")).health == "healthy"
    (root / "clusters" / "lrb" / "solo.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {db_url: 'nonsense://nowhere'}}}}\n"
    )
    state = await deploy_fleet(selection=["lrb"], return_state=True)
    assert state.is_failed()
    result = await state.aresult(raise_on_failure=False)
    [solo] = result.outcomes
    assert (solo.hub, solo.outcome) == ("solo", Outcome.rolled_back), solo
    assert "restarted with the previous config" in solo.why
    assert solo.row()["outcome"].startswith("rolled back: ")
