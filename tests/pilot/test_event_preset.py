"""The event preset's `event_defaults` are real defaults: a `use_case: event` hub may leave
out `event.data_policy` / `event.prewarm` and gets the preset's; its own settings win; a
`kind: event` hub without data_policy and without the use case is a precise error; and
`hubfleet show` says where each event setting came from."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet, edit

from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.model import DataPolicy
from hubfleet.presets import load_preset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A private copy of the example fleet (local/workshop: kind event, use_case event)."""
    return copy_example_fleet(tmp_path)


def cluster_yaml(root: Path) -> Path:
    return root / "clusters" / "local" / "cluster.yaml"


def show(root: Path) -> dict[str, list[str]]:
    """`hubfleet show local/workshop --only event`: event key -> [value, from, source]."""
    result = subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", "show", "local/workshop", "--fleet", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return {
        cells[1].strip(): [c.strip() for c in cells[2:5]]
        for cells in (ln.split("│") for ln in result.stdout.splitlines() if "│" in ln)
        if cells[1].strip().startswith("event.")
    }


def test_use_case_event_fills_data_policy_and_prewarm(fleet: Path) -> None:
    edit(cluster_yaml(fleet), "      data_policy: export\n", "")
    edit(cluster_yaml(fleet), "      prewarm:\n        lead_time: PT2H\n", "")
    event = load_fleet(fleet).cluster("local").hub("workshop").event
    assert event is not None
    defaults = load_preset("event").event_defaults
    assert event.data_policy is DataPolicy(defaults["data_policy"]) is DataPolicy.delete
    assert event.prewarm is not None and event.prewarm.lead_time == timedelta(hours=2)
    assert event.from_preset == {"data_policy", "prewarm"}
    rows = show(fleet)
    assert rows["event.data_policy"][:2] == ["delete", "preset"]
    assert "presets/event.yaml" in rows["event.data_policy"][2]
    assert rows["event.prewarm"][1] == "preset" and "PT2H" in rows["event.prewarm"][0]
    assert rows["event.attendees"][:2] == ["40", "hub"]
    assert rows["event.start"][1] == "hub" and "cluster.yaml" in rows["event.start"][2]


def test_the_hubs_own_event_settings_win(fleet: Path) -> None:
    edit(cluster_yaml(fleet), "        lead_time: PT2H\n", "        lead_time: PT6H\n")
    event = load_fleet(fleet).cluster("local").hub("workshop").event
    assert event is not None
    assert event.data_policy is DataPolicy.export  # the preset says delete
    assert event.prewarm is not None and event.prewarm.lead_time == timedelta(hours=6)
    assert event.from_preset == frozenset()
    rows = show(fleet)
    assert rows["event.data_policy"][:2] == ["export", "hub"]
    assert rows["event.prewarm"][1] == "hub" and "PT6H" in rows["event.prewarm"][0]


def test_preset_fills_only_what_is_missing(fleet: Path) -> None:
    edit(cluster_yaml(fleet), "      prewarm:\n        lead_time: PT2H\n", "")
    event = load_fleet(fleet).cluster("local").hub("workshop").event
    assert event is not None
    assert event.data_policy is DataPolicy.export and event.from_preset == {"prewarm"}


def test_event_hub_without_data_policy_or_use_case_names_the_fix(fleet: Path) -> None:
    edit(cluster_yaml(fleet), "      data_policy: export\n", "")
    edit(cluster_yaml(fleet), "    use_case: event ", "    use_case: learning ")
    with pytest.raises(FleetInvalid) as info:
        load_fleet(fleet)
    [problem] = info.value.problems
    text = str(problem).replace(str(fleet), "<fleet>")
    assert text.startswith(
        "<fleet>/clusters/local/cluster.yaml:20: hubs[2].event.data_policy: required key is "
        "missing; add data_policy: export"
    ), text
    assert "or set use_case: event on the hub (its preset defaults it to 'delete')" in text


def test_standing_hub_with_use_case_event_gets_no_event_section(fleet: Path) -> None:
    """The defaults fill an existing `event:` section; they never make one up."""
    edit(
        cluster_yaml(fleet),
        "    kind: standing\n    values: [prod.values.yaml]\n",
        ("    kind: standing\n    values: [prod.values.yaml]\n    use_case: event\n"),
    )
    prod = load_fleet(fleet).cluster("local").hub("prod")
    assert prod.event is None
