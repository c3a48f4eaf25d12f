"""The export Job of an event hub's expiry, run for real on the real node.

The Job (tasks/kube_export.py, unchanged for the test) runs as a pod on the node from the
rclone image built here (``docker.io/rclone/rclone:<version>``: busybox and the rclone the
test tools build, testenv.images), with the users' home PVCs provisioned on the
node's disk and mounted read-only, and copies them to moto's S3 (auth enforced) or to
Azurite, both listening on the node's host-side address (``real_node.host_ip``: reachable
from the node's pods, from no other machine). hubfleet's flow then proves the copy with its
own client (boto3 / azure-storage-blob) from the host.

Tests: an export to S3 (objects appear, content matches), one to Azure blob, a failing
export (credentials that may list the bucket but not write to it: the pod's rclone fails,
the Job fails after its retries, the homes stay and a later export copies them all), and
the expiry of an event hub deployed with hubfleet's deploy_hub (Zero to JupyterHub on the
node) through the public ``expire_event_hub`` flow: exported, then removed.

What the test sets up around hubfleet, and why:
- The homes are PVCs named and labelled as KubeSpawner makes them (``claim-<user>``,
  ``component: singleuser-storage``), provisioned by the node's local-path provisioner and
  filled by a busybox pod on the node: the hubs here run without per-user storage
  (testenv.nodevalues), so no spawn would leave a home behind.
- The real node is tainted (only pods that ask land there). hubfleet's Job tolerates z2jh's
  user-node taint only, as on a real cluster; each namespace here carries the
  ``scheduler.alpha.kubernetes.io/defaultTolerations`` annotation for the node's taint,
  which the test apiserver's PodTolerationRestriction admission plugin adds to its pods, as
  an operator of a cluster with its own taints would.

Secret hygiene: the exporting IAM user's secret key (made per test) must appear in no run
log, artifact or run parameter, and in none of: the node's logs (kubelet, containerd,
kube-proxy, provisioner), the pods' logs (read from the API as each export container ends,
and whatever is left in the node's /var/log), the export pods' specs (their env), and the
image build logs under the hubfleet cache.

Figures (printed, and written to benchmarks/results/node_export.json): the Job pod's
duration (created -> container ended, as observed, and the container's own run time), the
export task's duration, and the expiry's duration on the node.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort
from waiting import wait_for

from blocks.cluster_access import ClusterAccess
from flows.deploy_hub import deploy_hub
from flows.event_hubs import expire_event_hub
from hubfleet.results import Expiry
from tasks.export import MANIFEST, ExportFailed
from tasks.helm import Helm
from tasks.kube_export import (
    EXPORT_LABEL,
    EXPORT_VALUE,
    RCLONE_IMAGE,
    SOURCE_LISTING,
    export_homes_with_job,
)
from testenv import build, history, hubimages, images
from testenv.node import POD_PLACEMENT, STORAGE_CLASS, RealNode
from testenv.nodevalues import node_values

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "node_export.json"
FIGURES: dict[str, Any] = {}
S3_BLOCK = "aws-node-export"
S3_READER_BLOCK = "aws-node-export-reader"
AZURE_BLOCK = "azure-node-export"

HOMES: dict[str, dict[str, bytes]] = {
    "alice": {
        "results.txt": b"42 attendees, 0 crashes\n",
        "work/data.bin": bytes(range(256)) * 1024,  # 256 KiB
    },
    "bob": {"notes.ipynb": b'{"cells": [], "nbformat": 4}'},
    "carol": {},  # an empty home still shows in the Job's listing
}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[dict[str, Any]]:
    """The figures of this module's tests, written once they have all run."""
    yield FIGURES
    if FIGURES:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        RESULTS.write_text(json.dumps({"measured_at": stamp, **FIGURES}, indent=2) + "\n")
        print(f"\nexport on the real node: {json.dumps(FIGURES)}")


# --- the namespace, the homes, the credentials ----------------------------------------------


def tolerate_real_node(kube_api, namespace: str) -> None:
    """Pods of `namespace` tolerate the real node's taint (PodTolerationRestriction)."""
    RealNode.admit_namespace(kube_api, namespace)


@pytest.fixture
def export_ns(kube_api, kube_namespace: str, real_node) -> str:
    """A fresh namespace whose pods may run on the real node."""
    tolerate_real_node(kube_api, kube_namespace)
    return kube_namespace


def add_homes(kube_api, namespace: str, homes: dict[str, dict[str, bytes]]) -> float:
    """Home PVCs as KubeSpawner names and labels them, on the node's disk, holding `homes`
    (written by a busybox pod on the node, owned by root, world-readable). Returns the
    seconds it took."""
    t0 = time.monotonic()
    core = client.CoreV1Api(kube_api)
    for user in homes:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(
                    name=f"claim-{user}",
                    labels={"component": "singleuser-storage", "hub.jupyter.org/username": user},
                ),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    storage_class_name=STORAGE_CLASS,
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "64Mi"}),
                ),
            ),
        )
    files = [(user, rel, data) for user, h in homes.items() for rel, data in h.items()]
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="homes-src"),
            binary_data={
                f"f{i}": base64.b64encode(d).decode() for i, (_, _, d) in enumerate(files)
            },
        ),
    )
    script = ["set -e", "umask 022"]
    script += [f"mkdir -p /homes/{user}" for user in homes]
    for i, (user, rel, _) in enumerate(files):
        path = f"/homes/{user}/{rel}"
        script += [f"mkdir -p $(dirname {path})", f"cp /src/f{i} {path}", f"chmod 644 {path}"]
    mounts = [client.V1VolumeMount(name="src", mount_path="/src", read_only=True)]
    mounts += [client.V1VolumeMount(name=f"h-{u}", mount_path=f"/homes/{u}") for u in homes]
    volumes = [
        client.V1Volume(name="src", config_map=client.V1ConfigMapVolumeSource(name="homes-src"))
    ]
    volumes += [
        client.V1Volume(
            name=f"h-{u}",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name=f"claim-{u}"
            ),
        )
        for u in homes
    ]
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="write-homes"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                node_selector=POD_PLACEMENT["nodeSelector"],
                containers=[
                    client.V1Container(
                        name="write",
                        image=images.BUSYBOX_IMAGE,
                        image_pull_policy="Never",
                        command=["/bin/sh", "-c", "\n".join(script)],
                        volume_mounts=mounts,
                    )
                ],
                volumes=volumes,
            ),
        ),
    )

    def written() -> bool:
        pod: Any = core.read_namespaced_pod("write-homes", namespace)
        if pod.status.phase == "Failed":
            log = core.read_namespaced_pod_log("write-homes", namespace)
            raise AssertionError(f"writing the homes failed: {log[-2000:]}")
        return pod.status.phase == "Succeeded"

    wait_for("the homes to be written on the node", written, timeout=180)
    core.delete_namespaced_pod("write-homes", namespace, grace_period_seconds=0)
    core.delete_namespaced_config_map("homes-src", namespace)
    return time.monotonic() - t0


def exporter(node_moto, bucket: str, *, write: bool) -> tuple[str, str]:
    """A new IAM user on moto for `bucket` (read and write, or list and read only) and its
    access key: (key id, secret). The secret is what the hygiene checks look for."""
    iam = node_moto.client("iam")
    name = f"{'exporter' if write else 'reader'}-{uuid.uuid4().hex[:6]}"
    # Wildcards: AWS authorizes ListObjectsV2 as s3:ListBucket and HeadObject as
    # s3:GetObject; moto as s3:ListObjectsV2 and a HEAD action of its own (a HEAD denied
    # with 403 makes rclone take the export prefix for a file and stop before writing).
    actions = ["s3:*"] if write else ["s3:List*", "s3:Get*", "s3:Head*"]
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="export",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": actions,
                        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


async def save_s3_block(name: str, node_moto, key: tuple[str, str]) -> None:
    from prefect_aws import AwsCredentials

    await AwsCredentials(
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        region_name=node_moto.region,
        aws_client_parameters={"endpoint_url": node_moto.endpoint_url},
    ).asave(name, overwrite=True)


@pytest.fixture
def s3_bucket(node_moto) -> tuple[Any, str]:
    """A fresh bucket on the node's moto, and an admin client for reading it back."""
    s3 = node_moto.client("s3")
    name = f"node-export-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return s3, name


def bucket_keys(s3: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix): o["Size"] for p in pages for o in p.get("Contents", [])}


def expected(homes: dict[str, dict[str, bytes]]) -> dict[str, int]:
    return {f"{u}/{f}": len(d) for u, h in homes.items() for f, d in h.items()}


# --- watching the Job's pods ----------------------------------------------------------------


class JobPods(threading.Thread):
    """Watches the export Job's pods in a namespace while hubfleet runs the Job: the node
    each ran on, its image, its spec (for the hygiene scan), how its container ended, and
    its log, read from the API as soon as the container ends (the flow deletes the Job,
    and its pods with it, once the Job is done). Timings: monotonic, 0.3 s polls."""

    def __init__(self, kube_api, namespace: str):
        super().__init__(daemon=True)
        self.kube_api, self.namespace = kube_api, namespace
        self.pods: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._done = threading.Event()

    def __enter__(self) -> JobPods:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(10)

    @property
    def runs(self) -> list[dict[str, Any]]:
        return sorted(self.pods.values(), key=lambda p: p["seen"])

    def run(self) -> None:
        core = client.CoreV1Api(self.kube_api)
        selector = f"{EXPORT_LABEL}={EXPORT_VALUE}"
        while not self._done.is_set():
            try:
                self._poll(core, core.list_namespaced_pod(self.namespace, label_selector=selector))
            except Exception as exc:  # reported by the test through .errors
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self._done.wait(0.3)

    def _poll(self, core: client.CoreV1Api, pods: Any) -> None:
        now = time.monotonic()
        for pod in pods.items:
            rec = self.pods.setdefault(pod.metadata.uid, {"name": pod.metadata.name, "seen": now})
            rec["node"] = pod.spec.node_name
            rec["image"] = pod.spec.containers[0].image
            rec["spec"] = json.dumps(self.kube_api.sanitize_for_serialization(pod.spec))
            for status in pod.status.container_statuses or []:
                if status.state.running and "running_at" not in rec:
                    rec["running_at"] = now
                ended = status.state.terminated
                if ended is None or "log" in rec:
                    continue
                ran = None
                if ended.started_at and ended.finished_at:
                    ran = (ended.finished_at - ended.started_at).total_seconds()
                rec.update(
                    ended_at=now,
                    exit=ended.exit_code,
                    reason=ended.reason,
                    ran_s=ran,
                    image_id=status.image_id,
                )
                try:
                    rec["log"] = core.read_namespaced_pod_log(
                        pod.metadata.name, self.namespace, container="export"
                    )
                except ApiException as exc:
                    rec["log"] = ""
                    self.errors.append(f"log of {pod.metadata.name}: {exc.status} {exc.reason}")


def pod_figures(run: dict[str, Any], t0: float, took: float) -> dict[str, float]:
    """The Job pod's share of a run that started at monotonic `t0` and took `took` s."""
    return {
        "until_pod_seen_s": round(run["seen"] - t0, 1),
        "pod_created_to_ended_s": round(run["ended_at"] - run["seen"], 1),
        "container_ran_s": run["ran_s"],
        "after_pod_ended_s": round(t0 + took - run["ended_at"], 1),
    }


# --- secret hygiene -------------------------------------------------------------------------


async def leaks(secret: str, real_node, pods: JobPods) -> list[str]:
    """Every place `secret` shows up: runs (logs, artifacts, parameters), node logs, pod logs
    and specs, image build logs. Also returns how much was read, to show the scan ran."""
    found: list[str] = []
    logs, artifacts = await history.logs(5000), await history.artifacts(limit=2000)
    found += [f"run log {log.flow_run_id}" for log in logs if secret in log.message]
    found += [f"artifact {a.key}" for a in artifacts if secret in json.dumps(a.data)]
    async with get_client() as c:
        runs = await c.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
    found += [f"flow run {r.name}" for r in runs if secret in json.dumps(r.parameters, default=str)]
    for run in pods.runs:
        found += [f"pod {run['name']} {part}" for part in ("log", "spec") if secret in run[part]]
    needle = secret.encode()
    files = [p for p in (real_node.workdir / "logs").rglob("*") if p.is_file()]
    files += [p for p in (real_node.workdir / "var-upper" / "log").rglob("*") if p.is_file()]
    # Every build log of the cache: the images' (image-*.log, npm's), the tools'.
    files += list((build.cache_dir() / "logs").rglob("*"))
    scanned = 0
    for path in files:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            scanned += len(data)
            if needle in data:
                found.append(str(path))
    assert scanned > 0 and any("kubelet" in p.name for p in files), "the node's logs were not read"
    assert any(p.name == "image-rclone.log" for p in files), "no image build log was read"
    return found


# --- the tests ------------------------------------------------------------------------------


async def test_export_job_on_the_node_copies_the_homes_to_moto_s3(
    kube_api, export_ns: str, real_node, node_moto, node_rclone_image, s3_bucket
) -> None:
    s3, bucket = s3_bucket
    key = exporter(node_moto, bucket, write=True)
    await save_s3_block(S3_BLOCK, node_moto, key)
    FIGURES["write_homes_s"] = round(add_homes(kube_api, export_ns, HOMES), 1)
    url = f"s3://{bucket}/events/node/{export_ns}/S1"

    @flow
    async def export() -> Any:
        return await export_homes_with_job(kube_api, export_ns, url, S3_BLOCK, "s1", 300)

    with JobPods(kube_api, export_ns) as pods:
        t0 = time.monotonic()
        result, volumes = await export()
        took = time.monotonic() - t0
    assert pods.errors == []
    # One pod, run by the real kubelet on the real node from the image built here.
    (run,) = pods.runs
    assert run["node"] == real_node.name and run["exit"] == 0, run
    assert run["image"] == RCLONE_IMAGE == node_rclone_image.ref.removeprefix("docker.io/")
    FIGURES["s3"] = {"export_task_s": round(took, 1), **pod_figures(run, t0, took)}
    # The objects are there, byte for byte, with the Job's listing and hubfleet's manifest.
    assert [v.user for v in volumes] == sorted(HOMES)
    assert result.files == expected(HOMES) and result.objects == 3
    prefix = f"events/node/{export_ns}/S1/"
    keys = bucket_keys(s3, bucket, prefix)
    assert {k: v for k, v in keys.items() if k not in (SOURCE_LISTING, MANIFEST)} == expected(HOMES)
    assert {SOURCE_LISTING, MANIFEST} <= set(keys)
    for user, files in HOMES.items():
        for rel, data in files.items():
            body = s3.get_object(Bucket=bucket, Key=f"{prefix}{user}/{rel}")["Body"].read()
            assert body == data, f"{user}/{rel}"
    listing = json.loads(
        s3.get_object(Bucket=bucket, Key=f"{prefix}{SOURCE_LISTING}")["Body"].read()
    )
    assert "carol" in {e["Path"] for e in listing if e["IsDir"]}  # the empty home was seen
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}{MANIFEST}")["Body"].read())
    assert manifest["volumes"] == {u: f"claim-{u}" for u in HOMES}
    # The Job and its Secret are gone; the homes are untouched.
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    assert batch.list_namespaced_job(export_ns).items == []
    assert (
        core.list_namespaced_secret(
            export_ns, label_selector=f"{EXPORT_LABEL}={EXPORT_VALUE}"
        ).items
        == []
    )
    pvcs = core.list_namespaced_persistent_volume_claim(export_ns).items
    assert sorted(p.metadata.name for p in pvcs) == [f"claim-{u}" for u in sorted(HOMES)]
    assert await leaks(key[1], real_node, pods) == []


async def test_export_job_on_the_node_copies_the_homes_to_azurite(
    kube_api, export_ns: str, real_node, node_azurite, node_rclone_image
) -> None:
    """The same Job to Azure blob: rclone logs in with the connection string of the
    AzureBlobStorageCredentials block (its BlobEndpoint is Azurite on the node's host-side
    address), hubfleet verifies with azure-storage-blob."""
    from azure.storage.blob import BlobServiceClient
    from prefect_azure import AzureBlobStorageCredentials

    await AzureBlobStorageCredentials(connection_string=node_azurite.connection_string).asave(
        AZURE_BLOCK, overwrite=True
    )
    service = BlobServiceClient.from_connection_string(node_azurite.connection_string)
    container = f"events-{uuid.uuid4().hex[:8]}"
    service.create_container(container)
    homes = {"dora": {"thesis.tex": b"\\section{Results}\n" * 50, "deep/er/x.csv": b"a,b\n1,2\n"}}
    add_homes(kube_api, export_ns, homes)
    url = f"az://{container}/events/node/{export_ns}/S2"

    @flow
    async def export() -> Any:
        return await export_homes_with_job(kube_api, export_ns, url, AZURE_BLOCK, "s2", 300)

    with JobPods(kube_api, export_ns) as pods:
        t0 = time.monotonic()
        result, _ = await export()
        took = time.monotonic() - t0
    (run,) = pods.runs
    assert run["node"] == real_node.name and run["exit"] == 0, run
    FIGURES["azure"] = {"export_task_s": round(took, 1), **pod_figures(run, t0, took)}
    assert result.files == expected(homes)
    prefix = f"events/node/{export_ns}/S2/"
    blobs = {
        b.name.removeprefix(prefix): b.size
        for b in service.get_container_client(container).list_blobs(name_starts_with=prefix)
    }
    assert {k: v for k, v in blobs.items() if k not in (SOURCE_LISTING, MANIFEST)} == expected(
        homes
    )
    blob = service.get_blob_client(container, f"{prefix}dora/thesis.tex")
    assert blob.download_blob().readall() == homes["dora"]["thesis.tex"]
    assert client.BatchV1Api(kube_api).list_namespaced_job(export_ns).items == []


async def test_failed_export_on_the_node_fails_clearly_and_keeps_the_homes(
    kube_api, export_ns: str, real_node, node_moto, node_rclone_image, s3_bucket
) -> None:
    """Credentials that may list the bucket (hubfleet's own check before anything changes
    passes) but not write to it: rclone in the pod is refused, the pod fails, the Job fails
    after its retries (backoffLimit 2), and the export raises saying so. Nothing was
    written; the homes are all still there: an export with write access copies them all."""
    s3, bucket = s3_bucket
    reader = exporter(node_moto, bucket, write=False)
    await save_s3_block(S3_READER_BLOCK, node_moto, reader)
    add_homes(kube_api, export_ns, HOMES)
    url = f"s3://{bucket}/events/node/{export_ns}/S3"

    @flow
    async def export(block: str, stamp: str) -> Any:
        return await export_homes_with_job(kube_api, export_ns, url, block, stamp, 300)

    with JobPods(kube_api, export_ns) as pods:
        t0 = time.monotonic()
        with pytest.raises(ExportFailed, match=r"export Job .* failed \(BackoffLimitExceeded") as e:
            await export(S3_READER_BLOCK, "s3a")
        failed_after = time.monotonic() - t0
    assert "the hub was not removed" in str(e.value)
    runs = pods.runs
    assert len(runs) == 3, runs  # the first pod and backoffLimit (2) retries
    for run in runs:
        assert run["node"] == real_node.name and run["exit"] != 0, run
        assert "AccessDenied" in run["log"], run["log"][-2000:]
    FIGURES["failed"] = {"export_task_s": round(failed_after, 1), "pods": len(runs)}
    assert bucket_keys(s3, bucket) == {}
    core = client.CoreV1Api(kube_api)
    assert client.BatchV1Api(kube_api).list_namespaced_job(export_ns).items == []
    pvcs = core.list_namespaced_persistent_volume_claim(export_ns).items
    assert sorted(p.metadata.name for p in pvcs) == [f"claim-{u}" for u in sorted(HOMES)]
    assert all(p.status.phase == "Bound" for p in pvcs)
    assert await leaks(reader[1], real_node, pods) == []

    # The homes are intact: with write access the export copies every file.
    writer = exporter(node_moto, bucket, write=True)
    await save_s3_block(S3_BLOCK, node_moto, writer)
    result, _ = await export(S3_BLOCK, "s3b")
    assert result.files == expected(HOMES)
    prefix = f"events/node/{export_ns}/S3/"
    data = s3.get_object(Bucket=bucket, Key=f"{prefix}alice/work/data.bin")["Body"].read()
    assert data == HOMES["alice"]["work/data.bin"]


# --- expiry of an event hub on the node -----------------------------------------------------


@pytest.fixture
def node_event_hub(tmp_path: Path, monkeypatch, kube, kube_api, real_node, helm, s3_bucket):
    """A fleet with one event hub on the real node (Zero to JupyterHub through hubfleet's
    layering, images built here), exporting to the node's moto. Yields a small handle;
    afterwards whatever the test left is removed."""
    refs = {}
    for name in ("k8s-hub", "proxy", "singleuser"):
        archive = hubimages.build_image(name)
        real_node.import_image(archive, timeout=600)
        refs[name] = archive.ref
    tag = uuid.uuid4().hex[:5]
    cluster, hub = f"nx{tag}", f"ev{tag}"
    root = tmp_path / "fleet"
    d = root / "clusters" / cluster
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: node-export-fleet\nchart_version: 4.4.0\n")
    (d / "cluster.values.yaml").write_text(yaml.safe_dump({"jupyterhub": node_values(refs)}))
    # A prod hub needs a login (hubfleet.auth): nobody logs in here (null).
    (d / f"{hub}.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
    )

    def write(end: datetime) -> None:
        event = {
            "start": (end - timedelta(hours=3)).isoformat(),
            "end": end.isoformat(),
            "attendees": 2,
            "organizers": ["organizer@example.org"],
            "data_policy": "export",
            "grace": "PT0S",
            "reminders": [],
            "export": {"url": f"s3://{s3_bucket[1]}/events", "credentials": S3_BLOCK},
        }
        hub_entry = {
            "name": hub,
            "domain": f"{hub}.{cluster}.hubfleet.test",
            "tier": "prod",
            "kind": "event",
            "values": [f"{hub}.values.yaml"],
            "event": event,
        }
        body = {
            "name": cluster,
            "provider": "kubeconfig",
            "kubeconfig": {"context": "hubfleet-testenv"},
            "hub_access": "port-forward",
            "hubs": [hub_entry],
        }
        (d / "cluster.yaml").write_text(yaml.safe_dump(body, sort_keys=False))

    write(datetime.now(UTC) + timedelta(hours=1))
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(cluster, overwrite=True)
    yield {"cluster": cluster, "hub": hub, "end": write}
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        if h.status(hub, hub) is not None:
            h.uninstall(hub, hub, wait_timeout="2m")
    except Exception:  # cleanup only: the test's own failure is what matters
        pass
    finally:
        h.close()
    try:
        client.CoreV1Api(kube_api).delete_namespace(hub)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def test_expiry_of_an_event_hub_on_the_node_exports_then_removes_it(
    kube_api, kube, real_node, node_moto, node_rclone_image, s3_bucket, node_event_hub
) -> None:
    s3, bucket = s3_bucket
    cluster, hub = node_event_hub["cluster"], node_event_hub["hub"]
    key = exporter(node_moto, bucket, write=True)
    await save_s3_block(S3_BLOCK, node_moto, key)
    deployed = await deploy_hub(cluster=cluster, hub=hub, gate="rollout", wait_timeout="5m")
    assert deployed.action == "install", deployed
    core = client.CoreV1Api(kube_api)
    hub_pod = wait_for(
        "the hub pod on the node",
        lambda: next(
            iter(core.list_namespaced_pod(hub, label_selector="component=hub").items), None
        ),
        timeout=60,
    )
    assert hub_pod.spec.node_name == real_node.name
    tolerate_real_node(kube_api, hub)
    homes = {"erin": {"slides.md": b"# Thanks for coming\n"}, "finn": {"a/b/c.txt": b"deep\n"}}
    add_homes(kube_api, hub, homes)

    # The event ends; the public expiry flow exports (the Job on the node), then removes.
    node_event_hub["end"](datetime.now(UTC) - timedelta(seconds=1))
    with JobPods(kube_api, hub) as pods:
        t0 = time.monotonic()
        expired = await expire_event_hub(cluster, hub, operator="node-test", export_timeout=300)
        took = time.monotonic() - t0
    (run,) = pods.runs
    assert run["node"] == real_node.name and run["exit"] == 0, run
    FIGURES["expiry"] = {"expire_event_hub_s": round(took, 1), **pod_figures(run, t0, took)}
    assert expired.outcome is Expiry.expired and expired.export.objects == 2, expired
    prefix = urlparse(expired.export.url).path.strip("/") + "/"
    assert prefix.startswith(f"events/{cluster}/{hub}/")
    keys = bucket_keys(s3, bucket, prefix)
    assert {k: v for k, v in keys.items() if k not in (SOURCE_LISTING, MANIFEST)} == expected(homes)
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}finn/a/b/c.txt")["Body"].read() == b"deep\n"
    # The hub is gone: no release, no namespace (its PVCs and pods with it).
    h = Helm(kube.kubeconfig, "hubfleet-testenv")
    try:
        assert h.status(hub, hub) is None
    finally:
        h.close()
    with pytest.raises(ApiException) as gone:
        core.read_namespace(hub)
    assert gone.value.status == 404
    assert await leaks(key[1], real_node, pods) == []
