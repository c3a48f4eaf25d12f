"""Presets on `local` hubs: a real JupyterHub whose use case is `event` runs the idle
culler as a hub-managed service with the preset's settings, gets the preset's singleuser
limits as Spawner limits, and ignores Kubernetes-only keys (which `hubfleet show` lists);
a hub without a use case runs no culler. Real: Prefect server, JupyterHub,
configurable-http-proxy, jupyterhub-idle-culler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from flows.deploy_hub import deploy_hub
from hubfleet.loader import load_fleet
from tasks import jupyterhub_api as api
from tasks.hub_credentials import load_ops_token
from tasks.local_hub import local_hub

pytestmark = [pytest.mark.usefixtures("prefect_server")]
REPO = Path(__file__).resolve().parents[2]


def culler_processes(pid: int) -> list[list[str]]:
    """Command lines of the live idle-culler processes under the hub `pid`."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # e.g. the health probe's stopped user server
        if any("jupyterhub_idle_culler" in part for part in cmd):
            found.append(cmd)
    return found


async def test_event_hub_on_local_runs_the_presets_culler(
    pilot_fleet, monkeypatch, data_dir
) -> None:
    cluster = f"l{uuid.uuid4().hex[:6]}"
    root = pilot_fleet("local", cluster)
    # A hub without a use case, to show the chart's own defaults are not applied on local.
    spec = root / "clusters" / cluster / "cluster.yaml"
    spec.write_text(spec.read_text().replace("    use_case: research\n", ""))
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    fleet = load_fleet(root)
    hack, lab = local_hub(fleet, cluster, "hack"), local_hub(fleet, cluster, "lab")
    try:
        result = await deploy_hub(cluster, "hack", operator="test")
        assert result.health == "healthy", result
        await deploy_hub(cluster, "lab", operator="test")

        # The event preset: cull after 1200 s idle, every 120 s, max age 14400 s, users too.
        state = hack.state()
        assert state is not None and state.hub is not None
        [cmd] = culler_processes(state.hub.pid)
        assert {
            "--timeout=1200",
            "--cull-every=120",
            "--max-age=14400",
            "--cull-users=True",
        } <= set(cmd)
        stored = await load_ops_token(cluster, "hack")
        assert stored is not None
        services = api.call(
            "GET", f"{state.url}/hub/api/services", token=stored.token.get_secret_value()
        ).json()
        culler = services["idle-culler"]
        assert culler["command"] and "--timeout=1200" in culler["command"]
        assert "jupyterhub_idle_culler" in " ".join(culler["command"])
        assert culler["pid"] in {p.pid for p in psutil.Process(state.hub.pid).children()}
        # singleuser memory/cpu of the preset, as (informational) Spawner limits.
        config = hack.config_file.read_text()
        assert '"mem_limit": "1G"' in config and '"cpu_limit": 1' in config
        assert "profile_list" not in config  # KubeSpawner only

        lab_state = lab.state()
        assert lab_state is not None and lab_state.hub is not None
        assert culler_processes(lab_state.hub.pid) == []
        assert "idle-culler" not in lab.config_file.read_text()

        # A hub that is killed (not stopped) leaves no orphan culler behind.
        culler_proc = psutil.Process(culler["pid"])
        os.kill(state.hub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and culler_proc.is_running():
            if culler_proc.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.2)
        assert not culler_proc.is_running() or culler_proc.status() == psutil.STATUS_ZOMBIE
    finally:
        hack.stop()
        lab.stop()

    shown = subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", "show", f"{cluster}/hack", "--fleet", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    [line] = [ln for ln in shown.stdout.splitlines() if ln.startswith("not applied on local:")]
    for key in ("singleuser.storage", "hub.config.KubeSpawner.profile_list", "scheduling."):
        assert key in line, line
    assert "cull" not in line and "singleuser.memory" not in line
