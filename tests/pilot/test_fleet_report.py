"""The fleet ops report on a history made by real runs: real local JupyterHubs, real
deploys, real shallow health sweeps, an outage injected by stopping a hub's processes (by
PID) and a recovery by redeploying it. The report's incident window must match the
injected outage to the sweep interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.check_fleet_health import check_fleet_health
from flows.deploy_hub import deploy_hub
from flows.fleet_report import collect_history, publish_fleet_report
from hubfleet.loader import load_fleet
from hubfleet.report import build_report, render
from tasks.local_hub import local_hub

pytestmark = [pytest.mark.usefixtures("prefect_server")]


async def test_report_matches_injected_outage(pilot_fleet, monkeypatch, data_dir) -> None:
    import uuid

    cluster = f"r{uuid.uuid4().hex[:6]}"
    root = pilot_fleet("local", cluster)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    fleet = load_fleet(root)
    start = datetime.now(UTC) - timedelta(seconds=1)
    selection = [f"{cluster}/course", f"{cluster}/lab"]
    hubs = [local_hub(fleet, cluster, h) for h in ("course", "lab")]
    try:
        for hub in ("course", "lab"):
            await deploy_hub(cluster, hub, operator="ops")

        async def sweep() -> datetime:
            await check_fleet_health(
                selection=selection, retries=0, timeout=2, alert_after=1, operator="schedule"
            )
            return datetime.now(UTC)

        await sweep()
        await sweep()
        stopped = datetime.now(UTC)
        hubs[0].stop()  # the outage: course's processes are gone
        last_before = datetime.now(UTC)
        await sweep()
        await sweep()
        await deploy_hub(cluster, "course", operator="ops")  # a person fixes it
        recovered = datetime.now(UTC)
        last_sweep = await sweep()
        await sweep()
    finally:
        for hub in hubs:
            hub.stop()

    sweeps, runs = await collect_history(start)
    mine = [s for s in sweeps if s.hub.startswith(f"{cluster}/")]
    report = build_report(mine, runs, start=start, use_cases={f"{cluster}/course": "learning"})
    course, lab = report.hubs[f"{cluster}/course"], report.hubs[f"{cluster}/lab"]
    assert course["sweeps"] == lab["sweeps"] == 6
    assert course["availability"] == pytest.approx(4 / 6, abs=1e-3)
    assert lab["availability"] == 1.0 and lab["incidents"] == 0
    [incident] = [i for i in report.incidents if i.hub == f"{cluster}/course"]
    # Start: the first sweep after the stop; end: the first sweep after the redeploy
    # (sweep rows record `checked_at` to the second).
    second = timedelta(seconds=1)
    assert last_before - second <= incident.start and stopped - second <= incident.start
    assert recovered - second <= incident.end <= last_sweep
    assert incident.sweeps == 2 and incident.cause
    assert report.mttr_minutes is not None and report.mttr_minutes > 0
    ops = report.operations
    assert ops["deploy_hub"]["completed"] >= 3 and ops["check_fleet_health"]["completed"] >= 6
    assert report.use_cases["learning"]["hubs"] == 1
    html = render(report, "html")
    assert "<svg" in html and "<polyline" in html and "<rect" in html
    assert f"{cluster}/course" in render(report, "md")
    published = await publish_fleet_report(since="1h")
    assert any(i.hub == f"{cluster}/course" for i in published.incidents)
