"""The fleet registry: the example validates; each kind of mistake gets an exact message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet, edit

from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.model import HubKind, Provider, Tier

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A private copy of the example fleet to break."""
    return copy_example_fleet(tmp_path)


def problems(root: Path) -> list[str]:
    with pytest.raises(FleetInvalid) as info:
        load_fleet(root)
    return [str(p).replace(str(root), "<fleet>") for p in info.value.problems]


def test_example_fleet_is_valid_and_covers_every_provider() -> None:
    fleet = load_fleet(REPO / "fleet")
    assert fleet.summary() == "5 clusters, 10 hubs, 2 event hubs"
    assert {c.provider for c in fleet.clusters} == set(Provider)
    local = fleet.cluster("local")
    assert [(h.name, h.tier, h.kind) for h in local.hubs] == [
        ("staging", Tier.staging, HubKind.standing),
        ("prod", Tier.prod, HubKind.standing),
        ("workshop", Tier.prod, HubKind.event),
    ]
    workshop = local.hub("workshop").event
    assert workshop is not None and workshop.start.utcoffset() is not None


def test_malformed_yaml(fleet: Path) -> None:
    (fleet / "clusters/local/cluster.yaml").write_text("name: local\nhubs: [\n")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:3: (yaml): invalid YAML: expected the node "
        "content, but found '<stream end>' at column 1; check indentation, ':' after keys "
        "and quoting"
    ]


def test_missing_values_file(fleet: Path) -> None:
    edit(fleet / "clusters/local/cluster.yaml", "[prod.values.yaml]", "[prdo.values.yaml]")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:15: hubs[1].values[0]: file 'prdo.values.yaml' "
        "not found in <fleet>/clusters/local; create it or fix the name"
    ]


def test_missing_fleet_yaml(fleet: Path) -> None:
    (fleet / "fleet.yaml").unlink()
    assert problems(fleet) == [
        "<fleet>/fleet.yaml:1: (file): file not found; create it or fix the path"
    ]


def test_wrong_type(fleet: Path) -> None:
    edit(fleet / "clusters/local/cluster.yaml", "attendees: 40", "attendees: forty")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:23: hubs[2].event.attendees: expected a whole "
        "number, found 'forty'"
    ]


def test_unknown_key(fleet: Path) -> None:
    edit(
        fleet / "clusters/local/cluster.yaml", "kind: standing", "kind: standing\n    colour: blue"
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:10: hubs[0].colour: unknown key 'colour'; "
        "allowed keys: name, domain, tier, kind, values, chart_version, event, use_case, auth"
    ]


def test_duplicate_hub_name(fleet: Path) -> None:
    edit(fleet / "clusters/local/cluster.yaml", "- name: prod", "- name: staging")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:11: hubs[1].name: duplicate hub name 'staging' "
        "(first at line 6); hub names must be unique in a cluster"
    ]


def test_duplicate_domain_across_clusters(fleet: Path) -> None:
    edit(
        fleet / "clusters/byo-kube/cluster.yaml",
        "course.university.example.edu",
        "college.hubs.example.org",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/gcp-central/cluster.yaml:13: hubs[1].domain: domain "
        "'college.hubs.example.org' is already used by hub byo-kube/course; each hub needs "
        "its own domain"
    ]


def test_end_before_start(fleet: Path) -> None:
    edit(
        fleet / "clusters/local/cluster.yaml",
        "end: 2027-03-17T18:00:00+01:00",
        "end: 2027-03-14T18:00:00+01:00",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:22: hubs[2].event.end: 2027-03-14T18:00:00+01:00 "
        "is not after start 2027-03-15T09:00:00+01:00; the end must be later than the start"
    ]


def test_naive_datetime_and_bad_enum_and_dns_name(fleet: Path) -> None:
    path = fleet / "clusters/local/cluster.yaml"
    edit(path, "start: 2027-03-15T09:00:00+01:00", "start: 2027-03-15T09:00:00")
    edit(path, "tier: staging", "tier: production")
    edit(path, "- name: prod", "- name: Prod_Hub")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:8: hubs[0].tier: found 'production'; allowed: "
        "staging or prod",
        "<fleet>/clusters/local/cluster.yaml:11: hubs[1].name: 'Prod_Hub' is not DNS-safe; "
        "use lower-case letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters",
        "<fleet>/clusters/local/cluster.yaml:21: hubs[2].event.start: '2027-03-15T09:00:00' "
        "has no timezone; add a UTC offset, e.g. 2026-12-01T09:00:00+01:00",
    ]


def test_provider_section_required_and_exclusive(fleet: Path) -> None:
    path = fleet / "clusters/gcp-central/cluster.yaml"
    edit(
        path,
        "gcp:\n  project: example-hubs-123\n  region: us-central1\n  zone: us-central1-b\n",
        "",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/gcp-central/cluster.yaml:2: gcp: required when provider is 'gcp'; "
        "add a 'gcp:' section with project and region"
    ]
    edit(path, "hubs:", "gcp: {project: example-1, region: r}\nlocal: {}\nhubs:")
    assert problems(fleet) == [
        "<fleet>/clusters/gcp-central/cluster.yaml:4: local: only allowed when provider is "
        "'local' (this cluster's provider is 'gcp'); remove it"
    ]


def test_cluster_name_must_match_directory(fleet: Path) -> None:
    edit(fleet / "clusters/aws-west/cluster.yaml", "name: aws-west", "name: aws-east")
    assert problems(fleet) == [
        "<fleet>/clusters/aws-west/cluster.yaml:1: name: found 'aws-east', but the directory "
        "is 'aws-west'; they must be equal"
    ]


def test_every_problem_is_listed_not_just_the_first(fleet: Path) -> None:
    edit(fleet / "clusters/local/cluster.yaml", "attendees: 40", "attendees: forty")
    edit(fleet / "clusters/local/cluster.yaml", "[prod.values.yaml]", "[nope.yaml]")
    edit(fleet / "fleet.yaml", "parallelism: 2", "parallelism: 0")
    assert len(problems(fleet)) == 3


def test_cli_validate(fleet: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", "validate", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "fleet example-fleet is valid: 5 clusters, 10 hubs, 2 event hubs"

    edit(fleet / "clusters/local/cluster.yaml", "kind: standing", "kind: standin")
    bad = subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", "validate", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr + bad.stdout
    assert "cluster.yaml:9: hubs[0].kind: found 'standin'; allowed: standing or event" in bad.stderr
    assert bad.stderr.strip().endswith("fleet is invalid: 1 problem(s); nothing was run")


def test_duplicate_key_names_the_key_and_both_places(fleet: Path) -> None:
    edit(
        fleet / "clusters/local/cluster.yaml",
        "    tier: staging\n",
        "    tier: staging\n    tier: prod\n",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:9: hubs[0].tier: duplicate key: 'tier' is already "
        "set in the mapping that starts at line 6; keep one of them (merge their contents)"
    ]
