"""`hubfleet import` on fixture repositories laid out like 2i2c-org/infrastructure
(tests/fixtures/z2jh-config, written for these tests): providers, basehub and daskhub
values, tiers, secret layers, what is not carried over, and refusals that write nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubfleet.importer import ImportFailed, import_config, write_fleet
from hubfleet.loader import load_fleet
from hubfleet.model import Provider, Tier
from hubfleet.values import hub_layers, hub_schema, schema_problems

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "fixtures" / "z2jh-config"
CLUSTERS = SOURCE / "config" / "clusters"
SETS = {
    ("onprem", "kubeconfig", "context"): "onprem-admin",
    ("utoronto", "azure", "subscription_id"): "0b1c2d3e-0000-4000-8000-000000000001",
    ("utoronto", "azure", "location"): "canadacentral",
}
SET_ARGS = [a for (c, s, f), v in SETS.items() for a in ("--set", f"{c}.{s}.{f}={v}")]


def load(path: Path) -> object:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture
def imported(tmp_path: Path) -> Path:
    out = tmp_path / "fleet"
    write_fleet(import_config(SOURCE, "imported", settings=SETS), out)
    return out


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )  # fmt: skip


def test_providers_map_to_hubfleet_sections(imported: Path) -> None:
    fleet = load_fleet(imported)  # the registry hubfleet validate reads
    assert fleet.settings.name == "imported" and fleet.settings.chart_version == "4.4.0"
    pilot, openlab = fleet.cluster("pilot"), fleet.cluster("openlab")
    assert pilot.provider is Provider.gcp and pilot.gcp is not None
    # 2i2c's gcp.zone holds a zone (zonal cluster): the region is derived from it.
    assert (pilot.gcp.project, pilot.gcp.region, pilot.gcp.zone) == (
        "example-pilot-hubs", "us-central1", "us-central1-b",
    )  # fmt: skip
    # The AWS account id comes from 2i2c's top-level `account` (12 digits).
    assert openlab.aws is not None
    assert (openlab.aws.account_id, openlab.aws.region) == ("123456789012", "us-west-2")
    azure = fleet.cluster("utoronto").azure
    assert azure is not None and azure.resource_group == "utoronto-hubs"
    assert azure.subscription_id == SETS[("utoronto", "azure", "subscription_id")]
    kube = fleet.cluster("onprem").kubeconfig
    assert kube is not None and kube.context == "onprem-admin"
    assert fleet.summary() == "4 clusters, 7 hubs, 0 event hubs"


def test_missing_required_fields_are_named_never_invented(tmp_path: Path) -> None:
    result = import_config(SOURCE, "imported")
    lines = [str(p) for p in result.problems]
    assert any(
        "utoronto/cluster.yaml:3: azure: hubfleet needs azure.subscription_id" in line
        and "--set utoronto.azure.subscription_id=" in line
        for line in lines
    ), lines
    assert any("--set utoronto.azure.location=" in line for line in lines)
    assert any("--set onprem.kubeconfig.context=" in line for line in lines)
    with pytest.raises(ImportFailed):
        write_fleet(result, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())  # not even a temporary directory


def test_basehub_values_are_copied_as_they_are(imported: Path) -> None:
    for name in ("common", "staging"):
        src = (CLUSTERS / "pilot" / f"{name}.values.yaml").read_bytes()
        assert (imported / "clusters" / "pilot" / f"{name}.values.yaml").read_bytes() == src
    # A file with top-level keys the hub chart lacks: those blocks are cut out, every
    # other line is as written (comments, block scalars), and they are listed.
    research = (imported / "clusters" / "pilot" / "research.values.yaml").read_text()
    assert "nfs" not in load(imported / "clusters" / "pilot" / "research.values.yaml")  # type: ignore[operator]
    original = (CLUSTERS / "pilot" / "research.values.yaml").read_text()
    kept = original[original.index("# The hub itself.") : original.index("jupyterhub-home-nfs")]
    assert kept in research
    assert load(imported / "clusters" / "pilot" / "research.values.yaml") == {
        "jupyterhub": load(CLUSTERS / "pilot" / "research.values.yaml")["jupyterhub"]  # type: ignore[index]
    }
    hub = load_fleet(imported).cluster("pilot").hub("research")
    assert hub.values == ["common.values.yaml", "research.values.yaml"]


def test_daskhub_values_are_un_nested_into_generated_files(imported: Path) -> None:
    for name in ("daskhub-common", "staging", "prod"):
        src = load(CLUSTERS / "openlab" / f"{name}.values.yaml")
        out = imported / "clusters" / "openlab" / f"{name}.values.yaml"
        assert load(out) == {"jupyterhub": src["basehub"]["jupyterhub"]}  # type: ignore[index]
        assert "(a daskhub values file)" in out.read_text().splitlines()[0]
    # The lines are the user's own, comments included.
    text = (imported / "clusters" / "openlab" / "daskhub-common.values.yaml").read_text()
    assert "  singleuser:\n    # Dask workers and notebooks share this image.\n" in text
    # The source repository is unchanged.
    assert load(CLUSTERS / "openlab" / "prod.values.yaml") == {
        "basehub": {"jupyterhub": {"singleuser": {"memory": {"limit": "8G", "guarantee": "4G"}}}}
    }


def test_not_carried_over_listed_as_file_line_key_why() -> None:
    result = import_config(SOURCE, "imported", settings=SETS)
    lines = [str(p) for p in result.dropped]
    rel = "tests/fixtures/z2jh-config/config/clusters/"

    def listed(where: str, why: str) -> bool:
        return any(line.startswith(rel + where) and why in line for line in lines)

    assert listed("pilot/research.values.yaml:1: nfs: ", "NFS")
    assert listed("pilot/research.values.yaml:16: jupyterhub-home-nfs: ", "NFS")
    assert listed("openlab/daskhub-common.values.yaml:2: basehub.nfs: ", "NFS")
    assert listed("openlab/daskhub-common.values.yaml:14: dask-gateway: ", "daskGateway")
    assert listed("pilot/staging.values.yaml:2: jupyterhub.custom: ", "without effect")
    assert listed("pilot/cluster.yaml:5: image_repo: ", "singleuser.image")
    assert listed("pilot/cluster.yaml:7: gcp.key: ", "never imported")
    assert listed("pilot/cluster.yaml:13: support: ", "support chart")
    assert listed("pilot/cluster.yaml:18: hubs[0].display_name: ", "display name")
    assert listed("pilot/cluster.yaml:29: hubs[1].uptime_check: ", "health")
    assert listed("openlab/cluster.yaml:7: aws.clusterName: ", "ClusterAccess")
    assert listed("utoronto/cluster.yaml:11: hubs[0].domain_override_file: ", "domain")
    assert listed("onprem/cluster.yaml:4: kubeconfig.file: ", "never imported")


def test_tiers_follow_the_stated_rule_and_are_listed_for_review() -> None:
    result = import_config(
        SOURCE, "imported", settings=SETS, tiers={("onprem", "course"): Tier.staging}
    )
    tiers = {(t.cluster, t.hub): t for t in result.tiers}
    assert len(tiers) == 7
    assert tiers[("pilot", "staging")].tier is Tier.staging
    assert tiers[("pilot", "research")].tier is Tier.prod
    prod = tiers[("openlab", "prod")]
    assert prod.by_rule and "cluster.yaml:22" in prod.where
    given = tiers[("onprem", "course")]
    assert (given.tier, given.by_rule) == (Tier.staging, False)
    assert "as given by --tier" in str(given)


def test_secret_layers_listed_never_copied(imported: Path) -> None:
    assert not list(imported.rglob("enc-*"))
    for path in imported.rglob("*.yaml"):
        assert "ENC[" not in path.read_text() and "sops" not in path.read_text().split("\n", 1)[1]
    result = import_config(SOURCE, "imported", settings=SETS)
    layers = {(s.cluster, s.hub): s for s in result.secrets}
    assert set(layers) == {("pilot", "staging"), ("openlab", "prod")}
    assert layers[("pilot", "staging")].command.endswith(
        "pilot/enc-staging.secret.values.yaml | hubfleet secret-values load pilot staging "
        "--from basehub"
    )
    assert "sops --decrypt " in layers[("openlab", "prod")].command
    assert "--from daskhub" in layers[("openlab", "prod")].command
    # The secret files are not among the hub's values files.
    hub = load_fleet(imported).cluster("pilot").hub("staging")
    assert hub.values == ["common.values.yaml", "staging.values.yaml"]


def test_enc_file_without_sops_metadata_is_flagged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(CLUSTERS / "onprem", src / "config" / "clusters" / "onprem")
    d = src / "config" / "clusters" / "onprem"
    (d / "enc-course.secret.values.yaml").write_text("jupyterhub: {hub: {cookieSecret: x}}\n")
    cluster = d / "cluster.yaml"
    cluster.write_text(cluster.read_text() + "      - enc-course.secret.values.yaml\n")
    result = import_config(src, "x", settings={("onprem", "kubeconfig", "context"): "c"})
    assert any("no sops metadata" in str(p) and ":11:" in str(p) for p in result.dropped)
    assert result.secrets[0].command.startswith("hubfleet secret-values load onprem course")
    assert "< " in result.secrets[0].command  # no sops to decrypt it with
    write_fleet(result, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("enc-*"))


def test_imported_values_pass_the_hub_charts_schema(imported: Path) -> None:
    """Every imported hub's values, layered as a deploy would, pass the schema of the
    chart it runs: hubfleet's wrapper, with z2jh's own schema at `jupyterhub`."""
    fleet = load_fleet(imported)
    for cluster in fleet.clusters:
        for hub in cluster.hubs:
            layers = hub_layers(fleet, cluster.name, hub)
            assert schema_problems(layers, hub_schema(fleet, hub)) == [], (cluster.name, hub.name)


@pytest.mark.parametrize(
    "case",
    ["bad-yaml-cluster", "bad-yaml-values", "missing-values", "bad-provider", "bad-domain"],
)
def test_malformed_source_names_file_and_line_writes_nothing(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src)
    d = src / "config" / "clusters" / "pilot"
    cluster = d / "cluster.yaml"
    if case == "bad-yaml-cluster":
        text = cluster.read_text().replace("  zone: us-central1-b", "  zone: us-central1-b: b")
        cluster.write_text(text)
        where = "pilot/cluster.yaml:10: (yaml): invalid YAML"
    elif case == "bad-yaml-values":
        (d / "staging.values.yaml").write_text("jupyterhub:\n  hub:\n  hub: {}\n")
        where = "pilot/staging.values.yaml:3: jupyterhub.hub: duplicate key"
    elif case == "missing-values":
        cluster.write_text(cluster.read_text().replace("- research.values.yaml", "- nope.yaml"))
        where = "pilot/cluster.yaml:33: hubs[1].helm_chart_values_files[1]: file 'nope.yaml'"
    elif case == "bad-provider":
        cluster.write_text(cluster.read_text().replace("provider: gcp", "provider: openstack"))
        where = "pilot/cluster.yaml:4: provider: found 'openstack'"
    else:
        cluster.write_text(cluster.read_text().replace("research.pilot", "Research_pilot"))
        where = "pilot/cluster.yaml:27: hubs[1].domain: 'Research_pilot.example.org'"
    run = cli("import", src, tmp_path / "out", *SET_ARGS, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"src/config/clusters/{where}" in run.stderr, run.stderr
    assert "nothing was written" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_what_would_be_written(tmp_path: Path) -> None:
    run = cli("import", SOURCE, tmp_path / "out", "--dry-run", *SET_ARGS, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "out").exists()
    assert "dry run: nothing was written; would write 14 file(s)" in run.stdout
    assert f"--- {tmp_path / 'out' / 'clusters' / 'utoronto' / 'cluster.yaml'}" in run.stdout
    assert "subscription_id: 0b1c2d3e-0000-4000-8000-000000000001" in run.stdout
    assert "research.values.yaml  (copied from" in run.stdout and "without nfs" in run.stdout
    assert "tier rule: a hub whose name contains 'staging' is tier staging" in run.stdout
    assert "pilot/research: prod (by the rule; review)" in run.stdout
    assert "secret layers (2;" in run.stdout and "not carried over (" in run.stdout


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    run = cli("import", SOURCE, out, *SET_ARGS, cwd=tmp_path)
    assert run.returncode == 2 and "exists and is not empty" in run.stderr
    assert "--overwrite" in run.stderr and list(out.iterdir()) == [out / "notes.txt"]
    run = cli("import", SOURCE, out, "--overwrite", *SET_ARGS, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "fleet.yaml").is_file()
    load_fleet(out)
