"""The `deploy_hub` run form in a real browser: Debian's headless Chromium opens the Prefect
UI of a real server, renders the form from the deployment's parameter schema, and we check
the cluster and hub fields (with the fleet's choices) are there. The screenshot is kept
under the test's tmp dir and copied to benchmarks/results/deploy_hub_form.png.

The server requires its credential: the browser goes through `LoggedIn` (tests/browser.py),
a loopback proxy that adds it to every API call, as a logged-in UI does. The test checks
that the real server does ask for the credential."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from browser import CHROMIUM, RESULTS, LoggedIn, chromium
from ops_helpers import CREDENTIALS, REPO
from prefect.client.orchestration import get_client

from hubfleet.loader import load_fleet
from hubfleet.server import PrefectServer

pytestmark = pytest.mark.usefixtures("ops_setup")


@pytest.fixture
def logged_in(ops_server: PrefectServer) -> Iterator[LoggedIn]:
    proxy = LoggedIn(ops_server.ui_url, CREDENTIALS[ops_server.api_url])
    yield proxy
    proxy.close()


async def test_deploy_hub_form_in_chromium(
    ops_server: PrefectServer, logged_in: LoggedIn, tmp_path: Path
) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run ./dev setup (apt-get)"
    # The real server's UI asks for the credential; its API refuses calls without it.
    settings = requests.get(f"{ops_server.ui_url}/ui-settings", timeout=30).json()
    assert settings["auth"] == "BASIC"
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("deploy_hub/default")
    url = f"{logged_in.url}/deployments/deployment/{deployment.id}/run"

    shot = tmp_path / "deploy_hub_form.png"
    taken = chromium(tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, RESULTS / "deploy_hub_form.png")

    dumped = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dumped.stdout))
    assert "Parameters" in text, f"the run form did not render: {text[:2000]}"
    fleet = load_fleet(REPO / "fleet")
    cluster_names = " ".join(sorted(c.name for c in fleet.clusters))
    # The field's title and description, then its choices: the fleet's clusters.
    assert re.search(r"\bCluster The cluster: .*? " + re.escape(cluster_names), text), text
    hub_names = " ".join(sorted({h.name for c in fleet.clusters for h in c.hubs}))
    assert re.search(r"\bHub The hub's name .*? " + re.escape(hub_names), text), text
    # Who ran it is recorded from how the run was created: the form has no such field.
    assert "Operator (Optional)" not in text


async def test_deployments_and_their_schedules_in_chromium(
    logged_in: LoggedIn, tmp_path: Path
) -> None:
    """What `hubfleet setup` (and so `hubfleet demo`) registers, as the UI shows it: every
    operation's deployment, the health sweeps with their schedules. The screenshot is
    copied to benchmarks/results/deployments.png."""
    url = f"{logged_in.url}/deployments"
    shot = tmp_path / "deployments.png"
    taken = chromium(tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    shutil.copy(shot, RESULTS / "deployments.png")

    def page_text(path: str, profile: str) -> str:
        dumped = chromium(tmp_path / profile, "--dump-dom", f"{logged_in.url}{path}")
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dumped.stdout))

    async with get_client() as client:
        deployments = await client.read_deployments(limit=200)
        sweeps = await client.read_flow_by_name("check_fleet_health")
    listed = page_text("/deployments", "profile-list")
    assert f" {len(deployments)} Deployments " in listed, listed[:3000]
    # The first page, with the nightly upgrade's schedule (fleet.yaml: 0 3 * * *).
    assert "deploy_hub" in listed and "At 03:00 AM every day" in listed, listed[:3000]
    # The health sweeps, on their flow's page, with their schedules.
    flow_page = page_text(f"/flows/flow/{sweeps.id}", "profile-flow")
    for name in ("health-shallow", "health-deep"):
        assert name in flow_page, f"{name} not shown: {flow_page[:3000]}"
