"""The fleet ops report on a history with every kind of operation, made by real runs on
real local JupyterHubs: deploys, shallow health sweeps with an outage injected (a hub's
processes stopped by PID) and fixed by a redeploy, a credential rotation (a hub's ops token,
through the real hub API), an event lifecycle (create_event_hub, then expire_event_hub once
the event is over) and a refused expiry of a standing hub (a failed run a person must see).

The report counts each operation once (a rotation's per-credential subflow is part of it),
per hub and per use case with its outcome, lists the failed run under "runs that needed a
human", and its incident window matches the injected outage to the sweep interval."""

from __future__ import annotations

import asyncio
import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet

from flows.check_fleet_health import check_fleet_health
from flows.deploy_hub import deploy_hub
from flows.event_hubs import create_event_hub, expire_event_hub
from flows.fleet_report import collect_history
from flows.rotate_credentials import rotate_credentials
from hubfleet.cli.pilot import _use_cases
from hubfleet.errors import HubfleetError
from hubfleet.loader import load_fleet
from hubfleet.report import build_report, render
from hubfleet.results import Expiry
from tasks.local_hub import local_hub

pytestmark = [pytest.mark.usefixtures("prefect_server")]
REPO = Path(__file__).resolve().parents[2]
SWEPT = ["local/staging", "local/prod"]


def _register_event_deployments(root: Path) -> None:
    """The event deployments as `hubfleet setup` registers them (create_event_hub schedules
    the expiry through them); the events tests' helper, loaded from its file."""
    spec = importlib.util.spec_from_file_location(
        "events_conftest", REPO / "tests" / "events" / "conftest.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_event_deployments(module.POOL, fleet_root=root)


def write_fleet(root: Path, end: datetime) -> Path:
    """The example fleet with use cases on its local hubs and a workshop ending at `end`
    whose data policy comes from the event preset (delete)."""
    copy_example_fleet(root.parent, root.name)
    path = root / "clusters" / "local" / "cluster.yaml"
    head, _, _ = path.read_text().partition("  - name: workshop")
    head = head.replace(
        "    values: [staging.values.yaml]\n",
        "    values: [staging.values.yaml]\n    use_case: learning\n",
    ).replace(
        "    values: [prod.values.yaml]\n",
        "    values: [prod.values.yaml]\n    use_case: research\n",
    )
    start = (end - timedelta(hours=1)).isoformat(timespec="seconds")
    path.write_text(
        head + "  - name: workshop\n    domain: workshop.local.hubfleet.test\n    tier: prod\n"
        "    kind: event\n    use_case: event\n    event:\n"
        f"      start: {start}\n      end: {end.isoformat(timespec='seconds')}\n"
        "      attendees: 3\n      organizers: [organizer@example.org]\n"
        "      grace: PT1S\n      reminders: []\n"
    )
    return root


async def test_report_counts_rotations_and_event_lifecycles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    event_end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=75)
    root = write_fleet(tmp_path / "fleet", event_end)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    fleet = load_fleet(root)
    assert fleet.cluster("local").hub("workshop").event.from_preset == {"data_policy", "prewarm"}
    await asyncio.to_thread(_register_event_deployments, root)
    start = datetime.now(UTC) - timedelta(seconds=1)
    hubs = {h: local_hub(fleet, "local", h) for h in ("staging", "prod", "workshop")}

    async def sweep() -> datetime:
        await check_fleet_health(
            selection=SWEPT, retries=0, timeout=2, alert_after=1, operator="schedule"
        )
        return datetime.now(UTC)

    try:
        for hub in ("staging", "prod"):
            await deploy_hub("local", hub, operator="ops")
        created = await create_event_hub("local", "workshop", operator="alice")
        assert created.deploy.health == "healthy"
        await sweep()
        rotated = await rotate_credentials(
            scope="hub:local/staging", max_age=timedelta(0), operator="carol"
        )
        assert [r.kind for r in rotated.rotated] == ["hub-ops-token"]
        await sweep()
        stopped = datetime.now(UTC)
        hubs["prod"].stop()  # the outage
        await sweep()
        await sweep()
        await deploy_hub("local", "prod", operator="ops")
        recovered = datetime.now(UTC)
        last_sweep = await sweep()
        # A person tries to expire a standing hub: refused, nothing changed, the run fails.
        with pytest.raises(HubfleetError):
            await expire_event_hub("local", "staging", operator="carol")
        assert hubs["staging"].is_running()
        wait = (event_end + timedelta(seconds=2) - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0))
        expired = await expire_event_hub("local", "workshop", operator="alice")
        assert expired.outcome is Expiry.expired and not hubs["workshop"].directory.exists()
    finally:
        for local in hubs.values():
            local.stop()

    sweeps, runs = await collect_history(start)
    report = build_report(
        [s for s in sweeps if s.hub in SWEPT], runs, start=start, use_cases=_use_cases(fleet)
    )
    staging, prod = report.hubs["local/staging"], report.hubs["local/prod"]
    workshop = report.hubs["local/workshop"]

    # Availability and the incident: the outage, to the sweep interval.
    assert staging["availability"] == 1.0 and staging["incidents"] == 0
    assert prod["sweeps"] == 5 and prod["availability"] == pytest.approx(3 / 5, abs=1e-3)
    [incident] = [i for i in report.incidents if i.hub == "local/prod"]
    second = timedelta(seconds=1)
    assert stopped - second <= incident.start and incident.sweeps == 2
    assert incident.end is not None and recovered - second <= incident.end <= last_sweep

    # Operations, once each, per hub with outcomes (the rotation's subflow is part of it).
    assert report.operations["rotate_credentials"] == {"completed": 1}
    assert staging["outcomes"]["rotate_credentials"] == {"completed": 1}
    assert staging["outcomes"]["expire_event_hub"] == {"failed": 1}
    assert staging["outcomes"]["deploy_hub"] == {"completed": 1}
    assert prod["outcomes"]["deploy_hub"] == {"completed": 2}
    assert workshop["use_case"] == "event"
    assert workshop["outcomes"]["create_event_hub"] == {"completed": 1}
    assert workshop["outcomes"]["expire_event_hub"] == {"completed": 1}
    assert workshop["outcomes"]["deploy_hub"] == {"completed": 1}  # create deploys it
    assert workshop["outcomes"]["teardown_hub"] == {"completed": 1}  # expiry removes it

    # Per kind and per use case.
    assert report.kinds["rotations"] == {"completed": 1}
    assert report.kinds["event lifecycles"] == {"completed": 2, "failed": 1}
    assert report.kinds["deploys"] == {"completed": 4}
    cases = report.use_cases
    assert cases["event"]["operations"]["create_event_hub"] == {"completed": 1}
    assert cases["event"]["operations"]["expire_event_hub"] == {"completed": 1}
    assert cases["learning"]["operations"]["rotate_credentials"] == {"completed": 1}
    assert cases["learning"]["operations"]["expire_event_hub"] == {"failed": 1}
    assert cases["research"]["operations"]["deploy_hub"] == {"completed": 2}
    assert cases["research"]["incidents"] == 1 and cases["learning"]["incidents"] == 0

    # The refused expiry is the one run that needed a human.
    assert [
        (r["op"], r["hub"], r["operator"], r["state"], r["why"]) for r in report.needed_human
    ] == [("expire_event_hub", "local/staging", "carol", "failed", "failed")]
    text = render(report, "md")
    assert "| rotations | completed 1 |" in text
    assert "| event lifecycles | completed 2, failed 1 |" in text
    assert "| event | create_event_hub | completed 1 |" in text
