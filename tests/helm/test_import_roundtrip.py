"""The import round trip: `hubfleet import` a 2i2c-style repository, `hubfleet validate`
it, `hubfleet show` a hub, dry-run deploy it to a Kubernetes cluster (the testenv control
plane, as the other Helm tests), and load a secret layer with `hubfleet secret-values load`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubfleet.importer import import_config, write_fleet

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "fixtures" / "z2jh-config"
SETS = {
    ("onprem", "kubeconfig", "context"): "hubfleet-testenv",
    ("utoronto", "azure", "subscription_id"): "0b1c2d3e-0000-4000-8000-000000000001",
    ("utoronto", "azure", "location"): "canadacentral",
}


def hubfleet(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", *map(str, args)],
        input=stdin, capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


@pytest.fixture
def imported(tmp_path: Path) -> Path:
    out = tmp_path / "imported"
    write_fleet(import_config(SOURCE, "imported", settings=SETS), out)
    return out


def test_import_validate_show_dry_run_deploy(imported: Path, kube, prefect_server) -> None:
    from blocks.cluster_access import ClusterAccess

    valid = hubfleet("validate", imported)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "fleet imported is valid: 4 clusters, 7 hubs, 0 event hubs" in valid.stdout

    shown = hubfleet("show", "onprem/course", "--fleet", imported)
    assert shown.returncode == 0, shown.stderr
    assert "teacher" in shown.stdout and "course.values.yaml" in shown.stdout

    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save("onprem", overwrite=True)
    dry = hubfleet("deploy", "onprem", "course", "--dry-run", "--fleet", imported)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "'dry_run': True" in dry.stdout and "Deployment/hub" in dry.stdout


def test_secret_values_load_from_basehub_and_daskhub(imported: Path, prefect_server) -> None:
    """What `sops --decrypt enc-... | hubfleet secret-values load ...` does with the
    decrypted text (here plain YAML on stdin: no sops in the tests)."""
    import asyncio

    from tasks.cluster_session import load_secret_values

    first = hubfleet(
        "secret-values", "load", "pilot", "staging", "--from", "basehub", "--fleet", imported,
        stdin="jupyterhub: {hub: {config: {GitHubOAuthenticator: {client_secret: s3cret}}}}\n"
        "nfs: {pv: {serverIP: 10.0.0.9}}\nsops: {version: 3.8.1}\n",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "s3cret" not in first.stdout + first.stderr
    assert "left out (not hubfleet hub values): nfs" in first.stderr
    assert "stored block hub-values-pilot-staging (replaced)" in first.stdout
    merged = hubfleet(
        "secret-values", "load", "pilot", "staging", "--merge", "--from", "daskhub",
        "--fleet", imported,
        stdin='{"basehub": {"jupyterhub": {"hub": {"config": {"X": {"y": "z"}}}}},'
        ' "dask-gateway": {"a": 1}}',
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    assert "dask-gateway" in merged.stderr
    values = asyncio.run(load_secret_values("pilot", "staging"))
    assert values == {
        "jupyterhub": {
            "hub": {
                "config": {"GitHubOAuthenticator": {"client_secret": "s3cret"}, "X": {"y": "z"}}
            }
        }
    }
    bad = hubfleet("secret-values", "load", "pilot", "nope", "--fleet", imported, stdin="{}")
    assert bad.returncode == 2 and "has no hub 'nope'" in bad.stderr
