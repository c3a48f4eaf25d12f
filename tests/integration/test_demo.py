"""`hubfleet demo` end to end, as a user runs it: a real Prefect server on SQLite started
by the CLI, real JupyterHubs, then `--down`. Runs the installed `hubfleet` command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hubfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hubfleet") or str(REPO / ".venv/bin/hubfleet")
    return subprocess.run(
        [exe, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=400
    )


def test_demo_up_reuse_and_down(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["HUBFLEET_DATA_DIR"] = str(data_dir / "demo")
    env["HUBFLEET_FLEET"] = str(REPO / "fleet")  # the example fleet, whatever a test set
    port = str(free_port())

    first = hubfleet("demo", "--port", port, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    assert "Prefect server started" in first.stdout
    for hub, tier, kind in [
        ("local/staging", "staging", "standing"),
        ("local/prod", "prod", "standing"),
        ("local/workshop", "prod", "event"),
    ]:
        row = next(line for line in first.stdout.splitlines() if f" {hub} " in line)
        assert tier in row and kind in row and "healthy" in row, row
    assert f"http://127.0.0.1:{port}/runs" in first.stdout

    # The runs are in the server's history, with their tags.
    api = f"http://127.0.0.1:{port}/api"
    runs = requests.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=10).json()
    deploys = {tuple(sorted(r["tags"])) for r in runs if r["name"].startswith("deploy_hub ")}
    for hub in ("staging", "prod", "workshop"):
        assert any(f"hub:local/{hub}" in tags and "op:deploy_hub" in tags for tags in deploys)
    listed = subprocess.run(
        [str(REPO / ".venv/bin/prefect"), "flow-run", "ls", "--limit", "50", "-o", "json"],
        env={**env, "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    listed_runs = json.loads(listed.stdout)
    assert any(
        "hub:local/workshop" in r["tags"] and r["name"] == "check_hub_health local/workshop"
        for r in listed_runs
    )

    # A second demo while the first is running reuses it.
    second = hubfleet("demo", "--port", port, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Prefect server reused" in second.stdout
    assert second.stdout.count(": unchanged") == 3

    states = list((data_dir / "demo" / "hubs").glob("local/*/state.json"))
    pids = [json.loads(s.read_text())[k]["pid"] for s in states for k in ("hub", "proxy")] + [
        json.loads((data_dir / "demo/prefect/server.json").read_text())["pid"]
    ]
    assert len(pids) == 7 and all(psutil.pid_exists(p) for p in pids)

    down = hubfleet("demo", "--down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    again = hubfleet("demo", "--down", env=env)
    assert "Prefect server: not running" in again.stdout
