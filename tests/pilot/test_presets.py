"""Use-case presets: three hubs with the three presets validate, their values are layered
under the hub's own files, and `hubfleet show` names each effective value's origin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hubfleet.charts import hub_schema, z2jh_defaults
from hubfleet.layers import Layer, merged
from hubfleet.loader import load_fleet
from hubfleet.presets import all_presets, explain
from hubfleet.values import hub_layers, validate_layers

REPO = Path(__file__).resolve().parents[2]


def hubfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_every_preset_is_valid_chart_values() -> None:
    for preset in all_presets():
        assert preset.images and preset.profiles, preset.use_case
        validate_layers(
            [Layer("chart", {"jupyterhub": z2jh_defaults("4.4.0")}), preset.layer()],
            hub_schema("4.4.0"),
        )


def test_three_presets_layered_under_the_hubs_own_values(pilot_fleet) -> None:
    fleet = load_fleet(pilot_fleet("kubeconfig"))
    cluster = fleet.clusters[0]
    values = {
        h.name: merged(hub_layers(fleet, cluster.name, h))["jupyterhub"] for h in cluster.hubs
    }
    # Preset beats the fleet-wide common file (cull.timeout 3600 there) ...
    assert values["hack"]["cull"]["timeout"] == 1200 and values["hack"]["cull"]["users"] is True
    assert values["lab"]["singleuser"]["storage"]["capacity"] == "50Gi"
    # ... and the hub's own file beats the preset.
    assert values["course"]["singleuser"]["memory"] == {"guarantee": "512M", "limit": "2G"}
    for hub in cluster.hubs:
        validate_layers(hub_layers(fleet, cluster.name, hub), hub_schema("4.4.0"))
    origins = {o.key: o for o in explain(hub_layers(fleet, cluster.name, cluster.hub("course")))}
    assert origins["jupyterhub.singleuser.memory.limit"].kind == "hub"
    assert origins["jupyterhub.singleuser.memory.limit"].overrode == ("chart", "preset")
    assert origins["jupyterhub.singleuser.memory.guarantee"].kind == "preset"
    assert origins["jupyterhub.ingress.hosts"].kind == "fleet"
    assert origins["jupyterhub.hub.config.JupyterHub.concurrent_spawn_limit"].kind == "cluster"
    assert origins["jupyterhub.hub.image.tag"].kind == "chart"


def test_show_explains_origins_and_validate_accepts(pilot_fleet) -> None:
    root = pilot_fleet("kubeconfig")
    assert hubfleet("validate", str(root)).returncode == 0
    result = hubfleet("show", "course", "--fleet", str(root))
    assert result.returncode == 0, result.stderr
    rows = {
        cells[1].strip(): [c.strip() for c in cells[2:]]
        for cells in (ln.split("│") for ln in result.stdout.splitlines() if "│" in ln)
        if cells[1].strip()
    }
    # key -> value, from (the kind of layer), source (which file), overridden layers
    assert rows["jupyterhub.singleuser.storage.capacity"][:3] == [
        "5Gi",
        "preset",
        "preset: learning",
    ]
    assert rows["jupyterhub.singleuser.memory.limit"][:2] == ["2G", "hub"]
    assert rows["jupyterhub.singleuser.memory.limit"][3] == "chart, preset"
    assert rows["jupyterhub.hub.config.JupyterHub.concurrent_spawn_limit"][:2] == ["20", "cluster"]
    assert rows["jupyterhub.ingress.hosts"][1] == "fleet"
    assert "jupyterhub.hub.image.tag" not in rows  # chart defaults only with --chart-defaults
    assert "preset: learning" in result.stdout and "course.values.yaml" in result.stdout
    # A bad hub name is a plain error, not a traceback.
    bad = hubfleet("show", "nope", "--fleet", str(root))
    assert bad.returncode == 2 and "no hub 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_use_case_names_the_allowed_ones(pilot_fleet) -> None:
    root = pilot_fleet("kubeconfig")
    path = root / "clusters" / "pilot" / "cluster.yaml"
    path.write_text(path.read_text().replace("use_case: research", "use_case: science"))
    result = hubfleet("validate", str(root))
    assert result.returncode == 2
    assert "use_case" in result.stderr and "learning" in result.stderr, result.stderr
