"""Storage and cost of a Kubernetes hub: its PVCs' requested sizes, read from a real
Kubernetes API server (the testenv control plane) through the cluster's access block, as
`hubfleet usage` does. Servers' hours need real user pods, which kwok's fake nodes do not
run; tests/pilot/test_usage_local.py has real users (the arithmetic is the same)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubfleet.loader import load_fleet
from hubfleet.usage import Sample, ServerSeen
from tasks.usage import collect_usage

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]

PVCS = {"claim-alice": "10Gi", "claim-bob": "512Mi", "hub-db-dir": "1Gi"}


def write_fleet(root: Path, cluster: str, hub: str) -> Path:
    d = root / "clusters" / cluster
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text(
        "name: usage-fleet\n"
        "prices:\n"
        "  kubeconfig:\n"
        "    storage_gib_month: 0.73\n"
        "    default_machine: m5.xlarge\n"
        "    machines:\n"
        "      m5.xlarge: {hourly: 0.192, cpu: 4, memory_gib: 16}\n"
    )
    (d / "cluster.yaml").write_text(
        f"name: {cluster}\nprovider: kubeconfig\nkubeconfig: {{context: hubfleet-testenv}}\n"
        f"hubs:\n  - {{name: {hub}, domain: {hub}.k.hubfleet.test, tier: staging, "
        "kind: standing, use_case: research}\n"
    )
    return root


async def test_pvc_sizes_are_the_storage_of_a_kubernetes_hub(
    tmp_path: Path, kube: Any, kube_api: Any
) -> None:
    from kubernetes import client

    from blocks.cluster_access import ClusterAccess

    cluster, hub = f"k{uuid.uuid4().hex[:6]}", f"u{uuid.uuid4().hex[:6]}"
    fleet = load_fleet(write_fleet(tmp_path / "fleet", cluster, hub))
    await ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(cluster, overwrite=True)
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=hub)))
    try:
        for name, size in PVCS.items():
            core.create_namespaced_persistent_volume_claim(
                hub,
                client.V1PersistentVolumeClaim(
                    metadata=client.V1ObjectMeta(name=name),
                    spec=client.V1PersistentVolumeClaimSpec(
                        access_modes=["ReadWriteOnce"],
                        resources=client.V1VolumeResourceRequirements(requests={"storage": size}),
                    ),
                ),
            )
        end = datetime.now(UTC)
        start = end - timedelta(hours=73)
        name = f"{cluster}/{hub}"
        started = end - timedelta(hours=3)
        usage = await collect_usage(
            fleet,
            start,
            end,
            samples=[Sample(name, end - timedelta(hours=1), (ServerSeen("alice", "", started),))],
        )
    finally:
        core.delete_namespace(hub)
    row = usage.hubs[name]
    assert row["storage_gib"] == 11.5  # 10 + 0.5 + 1
    assert row["storage_used_gib"] is None and row["storage_how"] == "3 PVC(s), requested size"
    # 11.5 GiB x 0.73 a GiB-month x 73 h / 730 h
    assert row["storage_cost"] == round(11.5 * 0.73 * 73 / 730, 2)
    # The research preset's default profile: 0.5 CPU (1/8 of the node) and 4G (1/4, the
    # larger share) on a 4 CPU / 16 GiB node at 0.192 an hour, for 2 h.
    assert row["machine"] == "m5.xlarge" and row["server_hours"] == 2.0
    assert (row["server_cpu"], row["server_memory_gib"]) == (0.5, 4.0)
    assert row["cost_per_server_hour"] == pytest.approx(0.192 / 4)
    assert row["compute_cost"] == round(2 * 0.192 / 4, 2)
    assert usage.notes == []


async def test_an_unreachable_cluster_is_a_note_not_a_failure(tmp_path: Path) -> None:
    cluster, hub = f"k{uuid.uuid4().hex[:6]}", "nobody"
    fleet = load_fleet(write_fleet(tmp_path / "fleet", cluster, hub))  # no access block saved
    end = datetime.now(UTC)
    usage = await collect_usage(fleet, end - timedelta(hours=1), end, samples=[])
    row = usage.hubs[f"{cluster}/{hub}"]
    assert row["storage_gib"] is None and row["storage_how"].startswith("not measured: ")
    assert usage.notes and usage.notes[0].startswith(f"{cluster}/{hub}: storage not measured")
