"""`hubfleet usage` on real user activity: real local JupyterHubs deployed by deploy_hub,
users who log in through the hub's login form (JupyterHub's dummy authenticator, set in
the hubs' values) and start, use and stop their own servers, real shallow health sweeps
that sample the hubs, a real Prefect server keeping the samples. The hours, peaks, users,
storage and cost must match what the test did; then the CLI in its three formats and the
ops report's usage section read the same history."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.hub_token import HubOpsToken
from flows.check_fleet_health import check_fleet_health
from flows.deploy_hub import deploy_hub
from hubfleet.loader import load_fleet
from tasks.local_hub import local_hub
from tasks.usage import SAMPLES_KEY, collect_usage, read_usage_samples

pytestmark = [pytest.mark.usefixtures("prefect_server")]
REPO = Path(__file__).resolve().parents[2]

#: The hubs' values: users log in with any password (dummy authenticator), and a server
#: requests 0.5 CPU and 2G (course) or 1 CPU and 4G (lab).
LOGIN = (
    "jupyterhub:\n"
    "  hub:\n"
    "    config:\n"
    "      JupyterHub: {{authenticator_class: dummy}}\n"
    "      Authenticator: {{allow_all: true}}\n"
    "  singleuser:\n"
    "    cpu: {{guarantee: {cpu}}}\n"
    "    memory: {{guarantee: {memory}}}\n"
)
#: A node of 4 CPU and 16 GiB for 0.80 an hour: a course server (1/8 of it) costs 0.10 an
#: hour, a lab server (1/4) 0.20; a GiB of home for a month costs 0.50.
PRICES = (
    "prices:\n"
    "  currency: EUR\n"
    "  local:\n"
    "    storage_gib_month: 0.5\n"
    "    default_machine: lab-node\n"
    "    machines:\n"
    "      lab-node: {hourly: 0.8, cpu: 4, memory_gib: 16}\n"
)
NOTE_BYTES = 300_000


class User:
    """A person at a browser: logs in through the form, starts and stops their server
    (cookie and XSRF token, as the hub's pages do), saves a file in a notebook server."""

    def __init__(self, hub_url: str, name: str):
        self.url, self.name = hub_url, name
        self.session = requests.Session()
        self.session.get(f"{hub_url}/hub/login", timeout=10).raise_for_status()
        answer = self.session.post(
            f"{hub_url}/hub/login",
            data={"username": name, "password": "any", "_xsrf": self.xsrf},
            timeout=30,
            allow_redirects=False,
        )
        assert answer.status_code == 302, (answer.status_code, answer.text[:300])

    @property
    def xsrf(self) -> str:
        return str(self.session.cookies.get("_xsrf", path="/hub/"))

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        answer = self.session.request(
            method,
            f"{self.url}/hub/api/{path}",
            headers={"X-XSRFToken": self.xsrf},
            timeout=60,
            **kw,
        )
        assert answer.status_code < 400, (method, path, answer.status_code, answer.text[:300])
        return answer

    def start(self) -> datetime:
        """Start the server, wait until it is ready; returns its `started` time."""
        self.api("POST", f"users/{self.name}/server")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            server = self.api("GET", "user").json()["servers"].get("")
            if server and server.get("ready"):
                return datetime.fromisoformat(server["started"].replace("Z", "+00:00"))
            time.sleep(0.5)
        raise AssertionError(f"{self.name}'s server did not become ready")

    def save_note(self, size: int) -> str:
        """PUT a file into the home through the notebook server's contents API (with an
        API token of the user's, which it returns for the secret scan)."""
        token = self.api("POST", f"users/{self.name}/tokens", json={"note": "test"}).json()
        answer = requests.put(
            f"{self.url}/user/{self.name}/api/contents/notes.txt",
            headers={"Authorization": f"token {token['token']}"},
            json={"type": "file", "format": "text", "content": "x" * size},
            timeout=60,
        )
        assert answer.status_code in (200, 201), (answer.status_code, answer.text[:300])
        return str(token["token"])

    def stop(self) -> None:
        self.api("DELETE", f"users/{self.name}/server")
        deadline = time.monotonic() + 60
        while self.api("GET", "user").json()["servers"]:
            assert time.monotonic() < deadline, f"{self.name}'s server did not stop"
            time.sleep(0.3)


def write_fleet(pilot_fleet: Any, cluster: str) -> Path:
    root: Path = pilot_fleet("local", cluster)
    (root / "fleet.yaml").write_text((root / "fleet.yaml").read_text() + PRICES)
    d = root / "clusters" / cluster
    (d / "course.values.yaml").write_text(LOGIN.format(cpu=0.5, memory="2G"))
    (d / "lab.values.yaml").write_text(LOGIN.format(cpu=1, memory="4G"))
    return root


async def test_usage_of_real_users_on_real_hubs(
    pilot_fleet: Any, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    cluster = f"u{uuid.uuid4().hex[:6]}"
    root = write_fleet(pilot_fleet, cluster)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    fleet = load_fleet(root)
    selection = [f"{cluster}/course", f"{cluster}/lab"]
    hubs = [local_hub(fleet, cluster, h) for h in ("course", "lab")]
    start = datetime.now(UTC) - timedelta(seconds=1)
    sweeps: list[tuple[datetime, datetime]] = []  # wall clock around each sweep

    async def sweep() -> None:
        before = datetime.now(UTC)
        result = await check_fleet_health(
            selection=selection, retries=0, timeout=5, alert_after=1, operator="schedule"
        )
        assert result.counts == {"healthy": 2}, result
        sweeps.append((before, datetime.now(UTC)))

    try:
        urls = {}
        for hub, local in zip(hubs_of(), hubs, strict=True):
            await deploy_hub(cluster, hub, operator="ops")
            state = local.state()
            assert state is not None
            urls[hub] = state.url
        alice, bob = User(urls["course"], "alice"), User(urls["course"], "bob")
        carol = User(urls["lab"], "carol")
        started = {"alice": alice.start(), "bob": bob.start(), "carol": carol.start()}
        alice_token = alice.save_note(NOTE_BYTES)
        await sweep()  # 1: alice, bob, carol
        time.sleep(2)
        await sweep()  # 2: alice, bob, carol
        bob.stop()
        time.sleep(1)
        await sweep()  # 3: alice, carol
        alice.stop()
        carol.stop()
        await sweep()  # 4: nobody
    finally:
        for hub in hubs:
            hub.stop()
    end = datetime.now(UTC)

    # The samples the sweeps kept: one per hub per sweep, at times inside the sweeps.
    samples = [s for s in await read_usage_samples(start) if s.hub.startswith(f"{cluster}/")]
    at = {hub: sorted(s.at for s in samples if s.hub == f"{cluster}/{hub}") for hub in hubs_of()}
    for hub in hubs_of():
        assert len(at[hub]) == 4
        for when, (before, after) in zip(at[hub], sweeps, strict=True):
            assert before <= when <= after
    running = [
        sorted(s.user for s in sample.servers)
        for sample in sorted(samples, key=lambda s: (s.hub, s.at))
    ]
    assert running == [
        ["alice", "bob"], ["alice", "bob"], ["alice"], [],  # course
        ["carol"], ["carol"], ["carol"], [],  # lab
    ]  # fmt: skip

    usage = await collect_usage(fleet, start, end)
    course, lab = usage.hubs[f"{cluster}/course"], usage.hubs[f"{cluster}/lab"]
    # Counted from `started` to the last sweep that saw the server.
    hours = {
        "alice": (at["course"][2] - started["alice"]).total_seconds() / 3600,
        "bob": (at["course"][1] - started["bob"]).total_seconds() / 3600,
        "carol": (at["lab"][2] - started["carol"]).total_seconds() / 3600,
    }
    assert course["server_hours"] == pytest.approx(hours["alice"] + hours["bob"], abs=1e-4)
    assert lab["server_hours"] == pytest.approx(hours["carol"], abs=1e-4)
    # ... which is what the test did, to the sweep: alice ran past sweep 3 (about 3 s+)
    assert hours["alice"] * 3600 >= (sweeps[2][0] - started["alice"]).total_seconds()
    assert hours["bob"] * 3600 >= (sweeps[1][0] - started["bob"]).total_seconds() >= 2
    assert (course["active_users"], lab["active_users"]) == (2, 1)
    assert (course["peak_users"], lab["peak_users"]) == (2, 1)
    assert usage.total["peak_users"] == 3  # all three ran at once
    assert usage.use_cases["learning"]["server_hours"] == course["server_hours"]
    assert usage.use_cases["research"]["active_users"] == 1
    # Storage: alice's note is in course's homes (plus what her server wrote itself).
    assert NOTE_BYTES <= course["storage_gib"] * 2**30 < NOTE_BYTES + 2**20
    assert course["storage_how"] == "homes on disk"
    # Cost: 0.10 / 0.20 an hour a server, storage 0.50 a GiB-month, in EUR.
    assert usage.currency == "EUR"
    assert course["cost_per_server_hour"] == pytest.approx(0.10)
    assert lab["cost_per_server_hour"] == pytest.approx(0.20)
    assert course["compute_cost"] == round(course["server_hours"] * 0.10, 2)
    window_h = (end - start).total_seconds() / 3600
    assert course["storage_cost"] == round(course["storage_gib"] * 0.5 * window_h / 730, 2)

    # The CLI, in its three formats, reads the same history.
    env = {**os.environ, "HUBFLEET_FLEET": str(root)}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "hubfleet.cli", "usage", "--since", "1h", "--hub", cluster,
             *args],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    data = json.loads(cli("--format", "json"))
    assert set(data["hubs"]) == {f"{cluster}/course", f"{cluster}/lab", f"{cluster}/hack"}
    got = data["hubs"][f"{cluster}/course"]
    assert got["server_hours"] == course["server_hours"] and got["peak_users"] == 2
    assert data["total"]["peak_users"] == 3 and data["currency"] == "EUR"
    table = list(csv.DictReader(io.StringIO(cli("--format", "csv", "--no-storage"))))
    by_name = {row["name"]: row for row in table}
    assert by_name[f"{cluster}/lab"]["active_users"] == "1"
    assert float(by_name[f"{cluster}/lab"]["server_hours"]) == lab["server_hours"]
    assert by_name["research"]["scope"] == "use_case" and by_name["fleet"]["peak_users"] == "3"
    assert by_name[f"{cluster}/course"]["storage_gib"] == ""  # --no-storage
    text = cli()
    assert "usage and estimated cost per use case" in text and "learning" in text
    assert f"{cluster}/course" in text and "lab-node" in text and "EUR" in text

    # The ops report has the section and its chart.
    done = subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", "report", "--since", "1h", "--format", "html"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<h2>Usage and cost</h2>" in done.stdout
    assert "aria-label='estimated cost per hub'" in done.stdout
    assert f"{cluster}/course" in done.stdout

    # No token the sweeps used or the users made is in what was recorded or printed.
    secrets = [alice_token]
    for hub in hubs_of():
        block = await HubOpsToken.aload(f"{cluster}-{hub}")
        secrets.append(block.token.get_secret_value())
    async with get_client() as client:
        recorded = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SAMPLES_KEY])), limit=200
        )
    seen = json.dumps([str(a.data) for a in recorded]) + text + done.stdout + json.dumps(data)
    assert recorded and all(len(secret) > 20 and secret not in seen for secret in secrets)


def hubs_of() -> tuple[str, str]:
    return ("course", "lab")
