"""Values layering and wave planning: pure functions, no Prefect, no cluster."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet

from hubfleet.charts import hub_schema
from hubfleet.layers import ValuesInvalid, merged
from hubfleet.loader import load_fleet
from hubfleet.plan import SelectionInvalid, plan_fleet, select
from hubfleet.values import hub_layers, secret_values_file, validate_layers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema(chart_repository) -> Path:
    """The wrapper's schema, with z2jh 4.4.0's at `jupyterhub`: read from the chart, which
    comes from the tests' loopback chart repository on a machine whose cache lacks it (so
    never at import time, before that repository is set up)."""
    return hub_schema("4.4.0")


def test_layers_in_order_later_wins(tmp_path: Path, schema: Path) -> None:
    fleet = load_fleet(REPO / "fleet")
    hub = fleet.cluster("gcp-central").hub("college")
    secret = {"jupyterhub": {"hub": {"cookieSecret": "ab" * 32}}}
    layers = hub_layers(fleet, "gcp-central", hub, secret)
    assert [layer.source.split(" ")[0] for layer in layers] == [
        "chart",
        "fleet:",
        "fleet/common.values.yaml",
        "fleet/clusters/gcp-central/college.values.yaml",
        "secret",
    ]
    values = merged(layers)["jupyterhub"]
    assert values["singleuser"]["memory"] == {"guarantee": "1G", "limit": "2G"}  # hub file
    assert values["cull"]["timeout"] == 3600  # fleet default over the chart's
    assert values["cull"]["every"] == 600  # z2jh's default kept
    assert values["ingress"]["hosts"] == ["college.hubs.example.org"]
    assert values["ingress"]["enabled"] is True  # hubfleet's default over z2jh's
    assert values["hub"]["cookieSecret"] == "ab" * 32
    validate_layers(layers, schema)


def test_cluster_values_file_sits_between_fleet_and_hub(tmp_path: Path) -> None:
    root = copy_example_fleet(tmp_path)
    (root / "clusters" / "gcp-central" / "cluster.values.yaml").write_text(
        "jupyterhub:\n  cull: {timeout: 7200}\n  singleuser: {memory: {limit: 8G}}\n"
    )
    fleet = load_fleet(root)
    values = merged(hub_layers(fleet, "gcp-central", fleet.cluster("gcp-central").hub("college")))
    values = values["jupyterhub"]
    assert values["cull"]["timeout"] == 7200  # cluster over fleet
    assert values["singleuser"]["memory"]["limit"] == "2G"  # hub over cluster


def test_schema_error_names_file_and_key_and_hides_secrets(schema: Path) -> None:
    fleet = load_fleet(REPO / "fleet")
    hub = fleet.cluster("gcp-central").hub("college")
    secret = "not-a-string-but-secret"
    layers = hub_layers(
        fleet, "gcp-central", hub, {"jupyterhub": {"hub": {"cookieSecret": [secret]}}}
    )
    layers[3].values["jupyterhub"]["singleuser"]["memmory"] = 1
    with pytest.raises(ValuesInvalid) as info:
        validate_layers(layers, schema)
    message = str(info.value)
    # The key was added in memory: the line is that of its parent, `singleuser:`.
    assert (
        "fleet/clusters/gcp-central/college.values.yaml:6: jupyterhub.singleuser.memmory: "
        "unknown key (did you mean 'memory'?)" in message
    )
    assert (
        "secret values (block hub-values-gcp-central-college): jupyterhub.hub.cookieSecret: "
        "expected string or null, found list (hidden: a secret value)" in message
    )
    assert secret not in message


def test_secret_values_file_is_private_and_always_removed() -> None:
    with (
        pytest.raises(RuntimeError),
        secret_values_file({"hub": {"cookieSecret": "x"}}) as path,
    ):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert '"cookieSecret": "x"' in path.read_text()
        raise RuntimeError("boom")
    assert not path.exists()


def big_fleet(tmp_path: Path, prod: int, parallelism: int = 2) -> Path:
    root = tmp_path / "fleet"
    (root / "clusters" / "c1").mkdir(parents=True)
    (root / "fleet.yaml").write_text(f"name: f\nparallelism: {parallelism}\n")
    hubs = "".join(
        f"  - {{name: p{i}, domain: p{i}.c1.example.org, tier: prod, kind: standing}}\n"
        for i in range(prod)
    )
    (root / "clusters" / "c1" / "cluster.yaml").write_text(
        "name: c1\nprovider: kubeconfig\nkubeconfig: {context: x}\nhubs:\n"
        "  - {name: s, domain: s.c1.example.org, tier: staging, kind: standing}\n" + hubs
    )
    return root


def test_waves_by_size_percent_and_parallelism(tmp_path: Path) -> None:
    fleet = load_fleet(big_fleet(tmp_path, prod=9))
    default = plan_fleet(fleet, ["*"], {}).clusters[0]
    assert default.support and [c.hub for c in default.staging] == ["s"]
    assert [len(w) for w in default.waves] == [2, 2, 2, 2, 1]  # parallelism
    assert default.steps() == 1 + 1 + 5
    by_size = plan_fleet(fleet, ["c1"], {}, wave_size=4).clusters[0]
    assert [len(w) for w in by_size.waves] == [4, 4, 1]
    assert by_size.steps() == 1 + 1 + (2 + 2 + 1)
    by_percent = plan_fleet(fleet, ["c1"], {}, wave_percent=50).clusters[0]
    assert [len(w) for w in by_percent.waves] == [5, 4]
    md = plan_fleet(fleet, ["*"], {}).markdown("plan")
    assert "health gate" in md and "prod wave 5" in md


def test_upgrade_plans_only_version_changes(tmp_path: Path) -> None:
    fleet = load_fleet(big_fleet(tmp_path, prod=3))
    deployed = {("c1", "s"): "4.4.0", ("c1", "p0"): "4.4.0", ("c1", "p1"): "4.3.0"}
    plan = plan_fleet(fleet, ["*"], deployed, only_version_changes=True).clusters[0]
    assert plan.staging == []
    assert [(c.hub, c.action) for w in plan.waves for c in w] == [
        ("p1", "upgrade"),
        ("p2", "install"),
    ]
    assert plan.unchanged == ["s", "p0"]


def test_selection_errors_name_what_is_known() -> None:
    fleet = load_fleet(REPO / "fleet")
    assert select(fleet, ["local/prod", "byo-kube"]) == [("local", "prod"), ("byo-kube", "course")]
    with pytest.raises(SelectionInvalid, match=r"'nope': fleet has no cluster 'nope'"):
        select(fleet, ["nope"])
    with pytest.raises(SelectionInvalid, match=r"cluster 'local' has no hub 'x'"):
        select(fleet, ["local/x"])
