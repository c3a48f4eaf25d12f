"""The `deploy_hub` run form in a real browser: Debian's headless Chromium opens the Prefect
UI of a real server, renders the form from the deployment's parameter schema, and we check
the cluster and hub fields (with the fleet's choices) are there. The screenshot is kept
under the test's tmp dir and copied to benchmarks/results/deploy_hub_form.png."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ops_helpers import REPO
from prefect.client.orchestration import get_client

from hubfleet.loader import load_fleet
from hubfleet.server import PrefectServer

pytestmark = pytest.mark.usefixtures("ops_setup")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
    "--force-prefers-reduced-motion",  # no fade-in: the screenshot shows the settled form
    # The UI is a single-page app: wait (in virtual time) for its API calls to render.
    "--virtual-time-budget=20000",
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a new empty profile; it exits by itself."""
    profile.mkdir()
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_deploy_hub_form_in_chromium(ops_server: PrefectServer, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run ./dev setup (apt-get)"
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("deploy_hub/default")
    url = f"{ops_server.ui_url}/deployments/deployment/{deployment.id}/run"

    shot = tmp_path / "deploy_hub_form.png"
    taken = chromium(tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, results / "deploy_hub_form.png")

    dumped = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dumped.stdout))
    assert "Parameters" in text, f"the run form did not render: {text[:2000]}"
    fleet = load_fleet(REPO / "fleet")
    cluster_names = " ".join(sorted(c.name for c in fleet.clusters))
    # The field's title and description, then its choices: the fleet's clusters.
    assert re.search(r"\bCluster The cluster: .*? " + re.escape(cluster_names), text), text
    hub_names = " ".join(sorted({h.name for c in fleet.clusters for h in c.hubs}))
    assert re.search(r"\bHub The hub's name .*? " + re.escape(hub_names), text), text
    assert "Operator (Optional)" in text
