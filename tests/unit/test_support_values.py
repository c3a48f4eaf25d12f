"""A cluster's optional `support.values.yaml` (the support chart's placeholders: size,
placement, image): checked against helm/support's schema before anything runs, each
mistake as `file:line: field: message` with the bad value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet

from hubfleet.layers import ValuesInvalid
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.values import support_layers, support_problems

REPO = Path(__file__).resolve().parents[2]
FILE = "clusters/gcp-central/support.values.yaml"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return copy_example_fleet(tmp_path)


def found(root: Path, cluster: str = "gcp-central") -> list[str]:
    problems = support_problems(load_fleet(root), cluster)
    return [str(p).replace(str(root.resolve()), "<fleet>") for p in problems]


def test_no_file_is_fine_and_gives_only_the_chart_defaults(fleet: Path) -> None:
    assert found(fleet) == []
    [defaults] = support_layers(load_fleet(fleet), "gcp-central")
    assert defaults.values["userPlaceholder"]["nodeSelector"] == {}


def test_a_valid_file_is_a_layer_helm_gets(fleet: Path) -> None:
    (fleet / FILE).write_text(
        "userPlaceholder:\n"
        "  image: {name: hubfleet.local/pause, tag: '1', pullPolicy: Never}\n"
        "  resources: {requests: {cpu: 10m, memory: 512Mi}}\n"
        "  nodeSelector: {pool: events}\n"
        "  tolerations:\n"
        "    - {key: pool, operator: Equal, value: events, effect: NoSchedule}\n"
    )
    assert found(fleet) == []
    _, layer = support_layers(load_fleet(fleet), "gcp-central")
    assert layer.path == fleet.resolve() / FILE
    assert layer.values["userPlaceholder"]["nodeSelector"] == {"pool": "events"}


def test_each_mistake_names_file_line_field_value_and_fix(fleet: Path) -> None:
    (fleet / FILE).write_text(
        "userPlaceholder:\n"
        "  replicas: 4\n"
        "  image: {name: pause, tag: '1', pullPolicy: Sometimes}\n"
        "  nodeSelecter: {pool: events}\n"
        "  tolerations:\n"
        "    - {key: pool, operator: Equals}\n"
        "hubNamespaces: [a]\n"
    )
    at = "<fleet>/" + FILE
    assert found(fleet) == [
        f"{at}:7: hubNamespaces: found a list, but hubfleet sets it to the cluster's hub "
        "namespaces (from cluster.yaml); remove it from this file",
        f"{at}:2: userPlaceholder.replicas: found 4, but hubfleet sets it from the event "
        "hubs' pre-warm (`event.prewarm` / attendees) or `hubfleet deploy-support "
        "--placeholders N`; remove it from this file",
        f"{at}:4: userPlaceholder.nodeSelecter: unknown key (did you mean 'nodeSelector'?); "
        "allowed here: enabled, image, nodeSelector, replicas, resources, tolerations",
        f"{at}:3: userPlaceholder.image.pullPolicy: found 'Sometimes'; allowed: "
        "'IfNotPresent', 'Always', 'Never'",
        f"{at}:6: userPlaceholder.tolerations[0].operator: found 'Equals'; allowed: "
        "'Equal', 'Exists'",
    ]
    with pytest.raises(ValuesInvalid, match="Nothing was applied"):
        support_layers(load_fleet(fleet), "gcp-central")


def test_a_local_cluster_has_no_support_chart(fleet: Path) -> None:
    (fleet / "clusters/local/support.values.yaml").write_text("userPlaceholder: {}\n")
    assert found(fleet, "local") == [
        "<fleet>/clusters/local/support.values.yaml:1: (file): cluster 'local' is a local "
        "cluster: it has no support chart (hubs run as processes here); remove the file"
    ]


def test_a_link_out_of_the_fleet_is_refused(fleet: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("{}\n")
    (fleet / FILE).symlink_to(outside)
    with pytest.raises(FleetInvalid, match=r"support\.values\.yaml.*symlink"):
        load_fleet(fleet)
