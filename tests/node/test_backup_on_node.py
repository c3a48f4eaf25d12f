"""Backup and restore of a Zero to JupyterHub hub on the real node, through the public flows.

The hub is deployed by hubfleet's `deploy_hub` (z2jh on the node; its database on the
`hub-db-dir` PVC, on the node's disk). The users' homes are PVCs named and labelled as
KubeSpawner makes them, on the node's disk, filled by a busybox pod and owned by jovyan
(1000:100) as a user server leaves them (the hubs here run without per-user storage:
testenv.nodevalues). `backup_hub` copies homes and database with the export's
rclone Job (tasks/kube_export.py) to moto's S3 on the node's host-side address (auth
enforced), `restore_hub` writes homes back with the same Job, read-write.

Checked: the copy's objects, byte for byte, with the hub's sqlite database; a file deleted
on the node comes back for one user, then for all; a dry run changes nothing; retention
(keep: 1) deletes the older copy after the new one verified; the backup IAM user's secret
key is in no run log, artifact or parameter, no node or pod log, no pod spec
(test_export_on_node.leaks).

Figures (printed): deploy, backup, restore durations on the node.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client
from nodefleet import NodeFleet
from test_export_on_node import (
    JobPods,
    add_homes,
    bucket_keys,
    exporter,
    leaks,
    save_s3_block,
    tolerate_real_node,
    wait_for,
)

from flows.backup_hub import backup_hub
from flows.deploy_hub import deploy_hub
from flows.restore_hub import restore_hub
from tasks.backup import MANIFEST
from testenv import images
from testenv.node import POD_PLACEMENT

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

BLOCK = "aws-node-backup"
HOMES: dict[str, dict[str, bytes]] = {
    "ada": {"results.txt": b"ada's results\n", "work/data.bin": bytes(range(256)) * 64},
    "bo": {"notes.ipynb": b'{"cells": [], "nbformat": 4}'},
}


def on_node(kube_api: Any, namespace: str, script: str, users: list[str]) -> str:
    """Run `script` as root in a busybox pod on the node with the users' home PVCs at
    /homes/<user>; return its output."""
    core = client.CoreV1Api(kube_api)
    name = f"sh-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                restart_policy="Never",
                node_selector=POD_PLACEMENT["nodeSelector"],
                containers=[
                    client.V1Container(
                        name="sh",
                        image=images.BUSYBOX_IMAGE,
                        image_pull_policy="Never",
                        command=["/bin/sh", "-c", script],
                        volume_mounts=[
                            client.V1VolumeMount(name=u, mount_path=f"/homes/{u}") for u in users
                        ],
                    )
                ],
                volumes=[
                    client.V1Volume(
                        name=u,
                        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                            claim_name=f"claim-{u}"
                        ),
                    )
                    for u in users
                ],
            ),
        ),
    )

    def done() -> str | None:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        if phase in ("Succeeded", "Failed"):
            return str(phase)
        return None

    phase = wait_for(f"pod {name}", done, timeout=120)
    log = core.read_namespaced_pod_log(name, namespace)
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    assert phase == "Succeeded", log
    return str(log)


def listing(kube_api: Any, namespace: str) -> str:
    """Every file under the homes with its owner and size (`ls -lnR`)."""
    return on_node(kube_api, namespace, "cd /homes && ls -lnR .", sorted(HOMES))


async def test_backup_and_restore_of_a_hub_on_the_node(
    kube_api, kube, real_node, node_moto, node_rclone_image, node_fleet: NodeFleet
) -> None:
    figures: dict[str, float] = {}
    cluster, hub = node_fleet.cluster, node_fleet.hub
    s3 = node_moto.client("s3")
    bucket = f"node-backup-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    key = exporter(node_moto, bucket, write=True)
    await save_s3_block(BLOCK, node_moto, key)
    fleet_yaml = node_fleet.root / "fleet.yaml"
    settings = yaml.safe_load(fleet_yaml.read_text())
    settings["backup"] = {"url": f"s3://{bucket}/backups", "credentials": BLOCK, "keep": 1}
    fleet_yaml.write_text(yaml.safe_dump(settings))

    t0 = time.monotonic()
    deployed = await deploy_hub(cluster=cluster, hub=hub, gate="rollout", wait_timeout="5m")
    figures["deploy_s"] = round(time.monotonic() - t0, 1)
    assert deployed.action == "install", deployed
    tolerate_real_node(kube_api, hub)
    add_homes(kube_api, hub, HOMES)
    # As a user server leaves a home: owned by jovyan.
    on_node(kube_api, hub, "chown -R 1000:100 /homes/*", sorted(HOMES))
    core = client.CoreV1Api(kube_api)
    assert core.read_namespaced_persistent_volume_claim("hub-db-dir", hub).status.phase == "Bound"

    with JobPods(kube_api, hub) as pods:
        t0 = time.monotonic()
        first = await backup_hub(cluster, hub, operator="node-test", backup_timeout=300)
        figures["backup_s"] = round(time.monotonic() - t0, 1)
    assert first.backed_up and first.users == ["ada", "bo"], first
    runs = pods.runs
    assert len(runs) == 2 and all(r["node"] == real_node.name and r["exit"] == 0 for r in runs)
    prefix = f"backups/{cluster}/{hub}/{first.stamp}/"
    keys = bucket_keys(s3, bucket, prefix)
    for user, files in HOMES.items():
        for rel, data in files.items():
            assert keys[f"homes/{user}/{rel}"] == len(data)
            got = s3.get_object(Bucket=bucket, Key=f"{prefix}homes/{user}/{rel}")["Body"].read()
            assert got == data
    db = s3.get_object(Bucket=bucket, Key=f"{prefix}hub-db/hub-db-dir/jupyterhub.sqlite")
    assert db["Body"].read(16) == b"SQLite format 3\x00"  # the hub's database
    assert MANIFEST in keys and first.db == ["hub-db/hub-db-dir/jupyterhub.sqlite"]

    # Both users lose a file on the node.
    on_node(kube_api, hub, "rm /homes/ada/results.txt /homes/bo/notes.ipynb", sorted(HOMES))
    before = listing(kube_api, hub)
    assert "results.txt" not in before and "notes.ipynb" not in before
    dry = await restore_hub(cluster, hub, user="ada", dry_run=True, operator="node-test")
    assert dry.dry_run and "ada: 2 file(s)" in dry.would, dry
    assert listing(kube_api, hub) == before  # nothing changed

    with JobPods(kube_api, hub) as restore_pods:
        t0 = time.monotonic()
        one = await restore_hub(cluster, hub, user="ada", operator="node-test")
        figures["restore_one_s"] = round(time.monotonic() - t0, 1)
    assert one.users == ["ada"], one
    (run,) = restore_pods.runs
    assert run["node"] == real_node.name and run["exit"] == 0, run
    out = on_node(kube_api, hub, "cat /homes/ada/results.txt; ls -ln /homes/ada", ["ada"])
    assert out.startswith("ada's results\n") and " 1000 " in out, out
    assert "notes.ipynb" not in listing(kube_api, hub)  # bo's: not restored yet

    everyone = await restore_hub(cluster, hub, operator="node-test")
    assert everyone.users == ["ada", "bo"], everyone
    out = on_node(kube_api, hub, "cat /homes/bo/notes.ipynb", ["bo"])
    assert out == HOMES["bo"]["notes.ipynb"].decode()

    # keep: 1 — the next verified copy replaces the first.
    with JobPods(kube_api, hub) as pods2:
        second = await backup_hub(cluster, hub, operator="node-test", backup_timeout=300)
    assert second.pruned == [first.stamp], second
    assert bucket_keys(s3, bucket, prefix) == {}
    assert await leaks(key[1], real_node, pods) == []
    assert await leaks(key[1], real_node, restore_pods) == []
    assert await leaks(key[1], real_node, pods2) == []
    print(f"\nbackup on the real node: {figures}")
