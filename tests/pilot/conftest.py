"""A test fleet with one hub per use case (course: learning, lab: research, hack: event)."""

from __future__ import annotations

from pathlib import Path

CLUSTER = "pilot"


def write_pilot_fleet(root: Path, provider: str, cluster: str = CLUSTER) -> Path:
    """fleet.yaml + common values, a cluster.values.yaml, and the three preset hubs."""
    d = root / "clusters" / cluster
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text(
        "name: pilot-fleet\nchart_version: 4.4.0\nvalues: [common.values.yaml]\n"
    )
    (root / "common.values.yaml").write_text("jupyterhub:\n  cull:\n    timeout: 3600\n")
    (d / "cluster.values.yaml").write_text(
        # authenticator_class: a prod hub needs a login (hubfleet.auth); nobody logs in here.
        "jupyterhub:\n  hub:\n    config:\n      JupyterHub:\n        concurrent_spawn_limit: 20\n"
        "        authenticator_class: 'null'\n"
    )
    section = "kubeconfig: {context: hubfleet-testenv}" if provider == "kubeconfig" else "local: {}"
    hubs = "".join(
        f"  - name: {name}\n    domain: {name}.{cluster}.hubfleet.test\n    tier: {tier}\n"
        f"    kind: standing\n    use_case: {case}\n    values: [{name}.values.yaml]\n"
        for name, tier, case in (
            ("course", "prod", "learning"),
            ("lab", "prod", "research"),
            ("hack", "staging", "event"),
        )
    )
    (d / "cluster.yaml").write_text(
        f"name: {cluster}\nprovider: {provider}\n{section}\nhubs:\n{hubs}"
    )
    (d / "course.values.yaml").write_text("jupyterhub:\n  singleuser:\n    memory: {limit: 2G}\n")
    (d / "lab.values.yaml").write_text("{}\n")
    (d / "hack.values.yaml").write_text("{}\n")
    return root


import pytest  # noqa: E402

from testenv.volumes import create_volumes  # noqa: E402


@pytest.fixture
def pilot_fleet(tmp_path: Path):
    """A function writing the pilot fleet: write(provider) -> root."""
    return lambda provider, cluster=CLUSTER: write_pilot_fleet(
        tmp_path / f"fleet-{provider}", provider, cluster
    )


@pytest.fixture(scope="session")
def pilot_pvs(kube_api) -> None:
    """Volumes for hub databases (the test cluster has no provisioner; PVCs bind these)."""
    create_volumes(kube_api, "hubfleet-pilot-pv", 8, reclaim="Delete")


@pytest.fixture
def kube_pilot_fleet(pilot_fleet, monkeypatch, kube, prefect_server, pilot_pvs) -> Path:
    """The pilot fleet on the testenv control plane, with its cluster access block saved."""
    import uuid

    from blocks.cluster_access import ClusterAccess

    cluster = f"p{uuid.uuid4().hex[:6]}"
    root = pilot_fleet("kubeconfig", cluster)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(cluster, overwrite=True)
    return root
