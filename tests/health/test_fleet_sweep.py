"""check_fleet_health: streaks across sweeps, one alert per outage, the webhook, history.

Real components: a real Prefect server (its triggers and actions services run the
automation), real local JupyterHubs, a real HTTP webhook receiver. One test injects a
single failed request; that needs a hub that fails on demand, so it uses a small loopback
server answering like a hub (`/hub/health`, `/hub/api`) and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter
from waiting import await_for

from deployments.health import AUTOMATION_NAME
from deployments.registry import HEALTH_OPERATIONS
from deployments.setup import SetupReport, register_health_alert
from flows.check_fleet_health import SweepTimedOut, check_fleet_health
from flows.deploy_hub import deploy_hub
from hubfleet.loader import load_fleet
from hubfleet.plan import SelectionInvalid
from hubfleet.results import HealthSweep
from tasks.local_hub import local_hub

pytestmark = pytest.mark.usefixtures("prefect_server", "health_fleet")
REPO = Path(__file__).resolve().parents[2]


def fleet() -> Any:
    return load_fleet(os.environ["HUBFLEET_FLEET"])


async def unhealthy_events(hub: str) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(event=EventNameFilter(name=["hubfleet.hub.unhealthy"])), limit=50
        )
    return [e for e in page.events if e.resource.id == f"hubfleet.hub.{hub}"]


async def sweep(**kw: Any) -> HealthSweep:
    return await check_fleet_health(selection=["hc/sweep"], backoff=0.1, timeout=2.0, **kw)


async def test_alert_once_after_three_failed_sweeps(webhook: Any, prefect_server: str) -> None:
    await CustomWebhookNotificationBlock(
        name="ops-webhook",
        url=webhook.url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("ops-webhook", overwrite=True)
    async with get_client() as client:
        report = SetupReport()
        await register_health_alert(client, fleet(), report)
        assert report.created == [f"automation {AUTOMATION_NAME!r}"], report

    await deploy_hub(cluster="hc", hub="sweep")
    hub = local_hub(fleet(), "hc", "sweep")
    first = await sweep()
    assert first.counts == {"healthy": 1} and first.changes == ["hc/sweep: first check, healthy"]

    # One failed sweep, then recovery: no alert.
    hub.stop()
    blip = await sweep()
    assert blip.unhealthy[0]["failures"] == 1 and blip.alerted == []
    await deploy_hub(cluster="hc", hub="sweep")
    back = await sweep()
    assert back.counts == {"healthy": 1} and back.recovered == []
    assert back.changes == ["hc/sweep: down → healthy"]

    # Three failed sweeps in a row: one alert, on the third. A sweep of another hub in
    # between (a selection) leaves this hub's streak as it was.
    hub.stop()
    streak = [await sweep()]
    await check_fleet_health(selection=["hc/ok"], backoff=0.1, timeout=2.0)
    streak += [await sweep() for _ in range(2)]
    assert [s.unhealthy[0]["failures"] for s in streak] == [1, 2, 3]
    assert [s.alerted for s in streak] == [[], [], ["hc/sweep"]]
    assert streak[2].unhealthy[0]["level"] == "reachable"

    got = await await_for("the webhook notification", _received(webhook, 1), timeout=45)
    assert "hc/sweep is down" in got[0]["subject"], got
    assert "reachable" in got[0]["body"] and "3 shallow sweep(s)" in got[0]["body"], got
    # A fourth failed sweep is the same outage: no second event, no second notification,
    # here too with another hub's sweep in between.
    await check_fleet_health(selection=["hc/ok"], backoff=0.1, timeout=2.0)
    fourth = await sweep()
    assert fourth.alerted == [] and fourth.unhealthy[0]["failures"] == 4
    await asyncio.sleep(5)
    assert len(webhook.received) == 1, webhook.received
    assert len(await unhealthy_events("hc/sweep")) == 1

    # Recovery is an event too, and resets the streak.
    await deploy_hub(cluster="hc", hub="sweep")
    healed = await sweep()
    assert healed.recovered == ["hc/sweep"]

    # The history command shows the outage: since when, and that it ended.
    history = subprocess.run(
        [str(Path(sys.executable).parent / "hubfleet"), "health", "hc/sweep", "--since", "1h"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stdout + history.stderr
    lines = [line for line in history.stdout.splitlines() if "hc/sweep" in line]
    assert sum("down" in line for line in lines) >= 5, history.stdout
    assert "Traceback" not in history.stdout + history.stderr


def _received(webhook: Any, n: int) -> Any:
    async def check() -> list[dict[str, Any]] | None:
        return webhook.received if len(webhook.received) >= n else None

    return check


class FlakyHub:
    """A loopback HTTP server answering like a hub; /hub/health fails `failures` times,
    each answer `delay` seconds late."""

    def __init__(self, failures: int, delay: float = 0.0) -> None:
        state = {"left": failures, "health_calls": 0}
        self.state = state

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(delay)
                if self.path == "/hub/health":
                    state["health_calls"] += 1
                    if state["left"] > 0:
                        state["left"] -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                body = json.dumps({"version": "6.1.1"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def point_hub_at(data_dir: Path, hub: str, port: int) -> None:
    """The hub's local state points at a loopback server (no process to stop)."""
    directory = data_dir / "hubs" / "hc" / hub
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(
        json.dumps(
            {"ports": {"public": port, "proxy_api": 1, "hub": 1}, "hub": None, "proxy": None}
        )
    )


async def test_one_failed_request_is_retried_not_counted(data_dir: Path) -> None:
    flaky = FlakyHub(failures=1)
    try:
        point_hub_at(data_dir, "flaky", flaky.port)
        result = await check_fleet_health(depth="api", selection=["hc/flaky"], backoff=0.1)
    finally:
        flaky.close()
    assert result.counts == {"healthy": 1}, result
    assert flaky.state["health_calls"] == 2  # the 503, then the retry that passed


async def test_a_sweep_that_cannot_finish_fails_by_its_deadline(data_dir: Path) -> None:
    """The nightly sweep must never wait without a bound (issue: a 1,000-hub benchmark
    sat idle for minutes, every request in the Prefect client's back-off). Here a hub
    answers every request 20 s late and keeps failing: with 4 tries per level the probe
    alone would take ~80 s; the 15 s deadline (ample for the sweep's other phases on a
    busy session server) fails the run while probing, saying what it waited for."""
    slow = FlakyHub(failures=100, delay=20.0)
    try:
        point_hub_at(data_dir, "flaky", slow.port)
        started = time.monotonic()
        with pytest.raises(SweepTimedOut, match=r"probing 1 hub\(s\) on 1 cluster\(s\) did not"):
            await check_fleet_health(
                depth="api", selection=["hc/flaky"], retries=3, backoff=0.1, deadline=15
            )
        assert time.monotonic() - started < 45  # the flow's own start and end included
    finally:
        slow.close()
    async with get_client() as client:  # other tests' workers may have started runs since
        runs = await client.read_flow_runs(limit=50, sort="START_TIME_DESC")
    sweep = next(r for r in runs if r.name.startswith("check_fleet_health"))
    assert sweep.state is not None and sweep.state.is_failed(), sweep.state


async def test_bad_selection_is_refused_before_anything_runs() -> None:
    """The same selection rules as every flow that takes one (hubfleet.plan.select)."""
    with pytest.raises(SelectionInvalid, match=r"'nope/x': fleet has no cluster 'nope'"):
        await check_fleet_health(selection=["nope/x"])
    with pytest.raises(SelectionInvalid, match=r"'hc/nope': cluster 'hc' has no hub"):
        await check_fleet_health(selection=["hc/nope", "*"])


def test_deployments_take_their_schedules_from_the_fleet() -> None:
    deep, shallow = HEALTH_OPERATIONS
    assert deep.name == "health-deep" and shallow.name == "health-shallow"
    # A module entrypoint: a worker in any directory imports it (a file path did not).
    assert {d.entrypoint for d in HEALTH_OPERATIONS} == {
        "flows.check_fleet_health:check_fleet_health"
    }
    assert deep.schedule_parameters == {"depth": "deep", "alert_after": 1}
    assert shallow.schedule_parameters["depth"] == "shallow"
    assert [d.cron(fleet()) for d in (deep, shallow)] == ["0 2 * * *", "*/15 * * * *"]
