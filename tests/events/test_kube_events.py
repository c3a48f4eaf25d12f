"""Event hubs on Kubernetes: pre-warm placeholders, and expiry of Helm-deployed hubs.

Real: the Prefect server (event deployments registered as `hubfleet setup` does), helm 3,
the hub and support charts, kube-apiserver + controller-manager + scheduler, kwok (pods
Running/Ready; Job pods Succeeded), moto's S3 (auth enforced) through the real boto3 client.

Fakes, only where nothing real can run here:
- kwok pods serve no HTTP, so the post-deploy health gate is replaced (`hub_health` returns
  healthy, marked "injected"), as in tests/helm. The expiry's health snapshot runs for real
  (and says down).
- No container runs on kwok, so the export Job's rclone never copies anything. `StandIn`
  plays the Job's container: it waits for the Job, reads its spec (the bucket URL, the PVCs
  mounted at /homes/<user>), uploads those users' files and the listing to moto's S3 with
  boto3, and only then lets the Job's pod be scheduled, so kwok completes it. The pod is held
  back by a scheduling gate that a test-only MutatingAdmissionPolicy adds to export pods
  (`export_gate`): without it kwok would complete the Job before anything was copied.
- The users' files exist only in the test (kwok volumes hold no data); their PVCs are real.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
    LogFilter,
)
from prefect.client.schemas.objects import StateType

from blocks.cluster_access import ClusterAccess
from flows import deploy_hub as deploy_hub_mod
from flows.deploy_hub import deploy_hub
from flows.event_hubs import (
    create_event_hub,
    expire_event_hub,
    reap_expired_event_hubs,
    scheduled_event_runs,
)
from hubfleet.events import NotExpirable
from tasks.export import MANIFEST, ExportFailed
from tasks.helm import Helm
from tasks.kube_export import EXPORT_LABEL, SOURCE_LISTING

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server", "event_deployments")]

GATE = "hubfleet.test/export-stand-in"
PLACEHOLDERS = ("hubfleet-support-user-placeholder", "hubfleet-system")
CREDENTIALS_BLOCK = "aws-kube-export"


def now() -> datetime:
    return datetime.now(UTC)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def event_pvs(kube_api) -> None:
    """Volumes for hub databases and user homes (the test cluster has no provisioner)."""
    core = client.CoreV1Api(kube_api)
    for i in range(40):
        body = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=f"hubfleet-events-pv-{i}"),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "20Gi"},
                access_modes=["ReadWriteOnce"],
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/hubfleet-events-pv-{i}"),
                persistent_volume_reclaim_policy="Retain",
            ),
        )
        try:
            core.create_persistent_volume(body)
        except ApiException as exc:
            if exc.status != 409:
                raise


@pytest.fixture(scope="session")
def export_gate(kube_api) -> str:
    """Test-only: export pods are created with a scheduling gate, so they wait for `StandIn`
    (kwok would otherwise complete them at once, before the stand-in copied anything)."""
    custom = client.CustomObjectsApi(kube_api)
    name = "hubfleet-test-export-gate"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "export-pods",
                    "expression": "has(object.metadata.labels) && "
                    f"object.metadata.labels.exists(k, k == '{EXPORT_LABEL}')",
                }
            ],
            "mutations": [
                {
                    "patchType": "ApplyConfiguration",
                    "applyConfiguration": {
                        "expression": "Object{spec: Object.spec{schedulingGates: "
                        f'[Object.spec.schedulingGates{{name: "{GATE}"}}]}}}}'
                    },
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name},
    }
    for plural, body in (
        ("mutatingadmissionpolicies", policy),
        ("mutatingadmissionpolicybindings", binding),
    ):
        try:
            custom.create_cluster_custom_object("admissionregistration.k8s.io", "v1", plural, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    core = client.CoreV1Api(kube_api)
    probe = client.V1Pod(
        metadata=client.V1ObjectMeta(name="gate-probe", labels={EXPORT_LABEL: "export"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x:1")]),
    )

    def gated() -> bool:
        pod: Any = core.create_namespaced_pod("default", probe, dry_run="All")
        return any(g.name == GATE for g in pod.spec.scheduling_gates or [])

    wait_for("the export-gate policy to take effect", gated, timeout=30)
    return GATE


@pytest.fixture
def bucket(moto_server: Any, prefect_server: str) -> tuple[Any, str]:
    """A fresh bucket on moto and the AwsCredentials block the fleet names."""
    from prefect_aws import AwsCredentials

    name = f"events-{uuid.uuid4().hex[:8]}"
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=name)
    AwsCredentials(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
        region_name=moto_server.region,
        aws_client_parameters={"endpoint_url": moto_server.endpoint_url},
    ).save(CREDENTIALS_BLOCK, overwrite=True)
    return s3, name


class KubeFleet:
    """A fleet with one `kubeconfig` cluster (the testenv control plane) of event hubs."""

    def __init__(self, root: Path, bucket: str):
        self.root, self.bucket = root, bucket
        self.tag = uuid.uuid4().hex[:5]
        self.cluster = f"k{self.tag}"

    def hub(self, short: str) -> str:
        return f"{short}{self.tag}"

    def write(self, events: dict[str, dict[str, Any]], standing: tuple[str, ...] = ()) -> None:
        """events: {short name: {start, end, attendees, prewarm?}}; names get the tag."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "fleet.yaml").write_text(
            "name: test-fleet\nparallelism: 2\nchart_version: 0.1.0\n"
        )
        d = self.root / "clusters" / self.cluster
        d.mkdir(parents=True, exist_ok=True)
        hubs: list[dict[str, Any]] = []
        for short in standing:
            hubs.append(self._hub(short, "standing"))
        for short, ev in events.items():
            hub = self._hub(short, "event")
            hub["event"] = {
                "start": ev["start"].isoformat(),
                "end": ev["end"].isoformat(),
                "attendees": ev.get("attendees", 3),
                "organizers": ["organizer@example.org"],
                "data_policy": "export",
                "grace": "PT0S",
                "reminders": [],
                "export": {
                    "url": f"s3://{self.bucket}/events",
                    "credentials": CREDENTIALS_BLOCK,
                },
                **({"prewarm": ev["prewarm"]} if "prewarm" in ev else {}),
            }
            hubs.append(hub)
        for hub in hubs:
            (d / f"{hub['name']}.values.yaml").write_text("{}\n")
        body = {
            "name": self.cluster,
            "provider": "kubeconfig",
            "kubeconfig": {"context": "hubfleet-testenv"},
            "hubs": hubs,
        }
        (d / "cluster.yaml").write_text(yaml.safe_dump(body, sort_keys=False))

    def _hub(self, short: str, kind: str) -> dict[str, Any]:
        name = self.hub(short)
        return {
            "name": name,
            "domain": f"{name}.{self.cluster}.hubfleet.test",
            "tier": "prod",
            "kind": kind,
            "values": [f"{name}.values.yaml"],
        }


@pytest.fixture
def kube_fleet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kube,
    event_pvs,
    bucket,
    event_deployments,
    register_deployments,
) -> Iterator[KubeFleet]:
    fleet = KubeFleet(tmp_path / "fleet", bucket[1])
    monkeypatch.setenv("HUBFLEET_FLEET", str(fleet.root))
    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(fleet.cluster, overwrite=True)

    async def healthy(op: Any) -> dict[str, str]:
        return {"verdict": "healthy", "reason": "injected: nothing answers behind a kwok pod"}

    monkeypatch.setattr(deploy_hub_mod, "hub_health", healthy)
    # The deployments' parameter schema lists the fleet's hub names: register them for a
    # fleet with every hub these tests use, and put the example fleet's back afterwards.
    later = now() + timedelta(days=30)
    fleet.write(
        {s: {"start": later, "end": later + timedelta(hours=1)} for s in ("ea", "eb", "ec", "ed")},
        standing=("s",),
    )
    register_deployments(event_deployments, fleet.root)
    yield fleet
    register_deployments(event_deployments)


# --- observing the cluster ------------------------------------------------------------------


def placeholders(kube_api) -> int | None:
    try:
        dep: Any = client.AppsV1Api(kube_api).read_namespaced_deployment(*PLACEHOLDERS)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return int(dep.spec.replicas)


def ready_placeholders(kube_api) -> int:
    dep: Any = client.AppsV1Api(kube_api).read_namespaced_deployment(*PLACEHOLDERS)
    return int(dep.status.ready_replicas or 0)


def release(kube, hub: str) -> dict[str, Any] | None:
    h = Helm(kube.kubeconfig, "hubfleet-testenv")
    try:
        return h.status(hub, hub)
    finally:
        h.close()


def namespace_phase(kube_api, name: str) -> str | None:
    try:
        ns: Any = client.CoreV1Api(kube_api).read_namespace(name)
        return str(ns.status.phase)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def add_home(kube_api, namespace: str, user: str) -> None:
    """A user home volume as KubeSpawner makes it (name, labels), bound to a test PV."""
    client.CoreV1Api(kube_api).create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(
                name=f"claim-{user}",
                labels={"component": "singleuser-storage", "hub.jupyter.org/username": user},
            ),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "10Gi"}),
            ),
        ),
    )


def export_leftovers(kube_api, namespace: str) -> list[str]:
    """Export Jobs and Secrets still in the namespace."""
    selector = f"{EXPORT_LABEL}=export"
    jobs: Any = client.BatchV1Api(kube_api).list_namespaced_job(namespace, label_selector=selector)
    secrets: Any = client.CoreV1Api(kube_api).list_namespaced_secret(
        namespace, label_selector=selector
    )
    return [f"job/{j.metadata.name}" for j in jobs.items] + [
        f"secret/{s.metadata.name}" for s in secrets.items
    ]


def bucket_keys(s3: Any, name: str) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=name)
    return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}


async def runs_of(flow_name: str, hub_tag: str) -> list:
    async with get_client() as c:
        return await c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[hub_tag])),
        )


# --- the stand-in for the export Job's container ----------------------------------------------


class StandIn(threading.Thread):
    """Plays the export Job's container (nothing runs in a kwok pod): reads the Job's spec,
    copies the mounted users' files (`homes`, test data) and the listing to the bucket with
    boto3, then removes the pod's scheduling gate so kwok completes it. With `short`, the
    last file is listed but not uploaded (a copy that lost a file)."""

    def __init__(
        self, kube_api, namespace: str, s3: Any, homes: dict[str, dict[str, bytes]], short=False
    ):
        super().__init__(daemon=True)
        self.kube_api, self.namespace, self.s3 = kube_api, namespace, s3
        self.homes, self.short = homes, short
        self.seen: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> dict[str, Any]:
        self.join(60)
        if self.error:
            raise self.error
        return self.seen

    def _play(self) -> None:
        batch, core = client.BatchV1Api(self.kube_api), client.CoreV1Api(self.kube_api)
        selector = f"{EXPORT_LABEL}=export"
        job = wait_for(
            "the export Job",
            lambda: next(
                iter(batch.list_namespaced_job(self.namespace, label_selector=selector).items),
                None,
            ),
            timeout=120,
        )
        spec = job.spec.template.spec
        container = spec.containers[0]
        env = {e.name: e.value for e in container.env or []}
        url = urlparse(env["HUBFLEET_EXPORT_URL"])
        bucket, prefix = url.netloc, url.path.strip("/")
        mounts = {m.name: m.mount_path for m in container.volume_mounts}
        claims = {v.persistent_volume_claim.claim_name: v.name for v in spec.volumes}
        users = sorted(mounts[claims[c]].removeprefix("/homes/") for c in claims)
        secret_name = container.env_from[0].secret_ref.name
        secret: Any = core.read_namespaced_secret(secret_name, self.namespace)
        self.seen = {
            "job": job.metadata.name,
            "users": users,
            "read_only": all(m.read_only for m in container.volume_mounts),
            "secret_keys": sorted(secret.data or {}),
            "secret_owner": [o.kind for o in secret.metadata.owner_references or []],
            "image": container.image,
        }
        listing: list[dict[str, Any]] = []
        uploads = []
        for user in users:
            listing.append({"Path": user, "Name": user, "Size": -1, "IsDir": True})
            for path, data in sorted(self.homes.get(user, {}).items()):
                rel = f"{user}/{path}"
                listing.append({"Path": rel, "Name": path, "Size": len(data), "IsDir": False})
                uploads.append((rel, data))
        if self.short:
            uploads = uploads[:-1]
        for rel, data in uploads:
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
        self.s3.put_object(
            Bucket=bucket, Key=f"{prefix}/{SOURCE_LISTING}", Body=json.dumps(listing).encode()
        )
        # Done copying: let the pod run (kwok completes it; the Job succeeds).
        pod = wait_for(
            "the export pod",
            lambda: next(
                iter(
                    core.list_namespaced_pod(
                        self.namespace, label_selector=f"job-name={job.metadata.name}"
                    ).items
                ),
                None,
            ),
            timeout=60,
        )
        self.seen["gated"] = [g.name for g in pod.spec.scheduling_gates or []]
        core.patch_namespaced_pod(
            pod.metadata.name, self.namespace, [{"op": "remove", "path": "/spec/schedulingGates"}]
        )


HOMES = {
    "alice": {"results.txt": b"42 attendees, 0 crashes\n", "work/data.bin": bytes(range(256))},
    "bob": {"notes.ipynb": b'{"cells": []}'},
}


# --- the tests ------------------------------------------------------------------------------


async def test_prewarm_sums_events_and_expiry_exports_then_removes_the_hub(
    kube_fleet: KubeFleet, kube, kube_api, bucket, export_gate, moto_server
) -> None:
    s3, bucket_name = bucket
    c, e1, e2, e3 = kube_fleet.cluster, *(kube_fleet.hub(s) for s in ("ea", "eb", "ec"))
    t = now()
    ongoing = {"start": t - timedelta(minutes=30), "end": t + timedelta(hours=2)}
    events: dict[str, dict[str, Any]] = {
        "ea": {**ongoing, "attendees": 3},
        "eb": {**ongoing, "attendees": 40, "prewarm": {"lead_time": "PT1H", "size": 5}},
        "ec": {
            "start": t + timedelta(days=3),
            "end": t + timedelta(days=3, hours=4),
            "prewarm": {"lead_time": "PT2H"},
        },
    }
    kube_fleet.write(events)
    before = placeholders(kube_api)

    # Dry run: says what it would set, changes nothing.
    dry = await create_event_hub(c, e1, dry_run=True, operator="erin")
    assert f"would set {c}'s placeholders to 3" in dry["prewarm"], dry["prewarm"]
    assert release(kube, e1) is None and placeholders(kube_api) == before

    # Create: the hub is deployed and the cluster warms one placeholder per attendee.
    created = await create_event_hub(c, e1, operator="erin")
    assert created["deploy"]["action"] == "install"
    assert f"-> 3 ({e1}: 3)" in created["prewarm"], created["prewarm"]
    assert placeholders(kube_api) == 3
    wait_for("3 ready placeholders", lambda: ready_placeholders(kube_api) == 3, 60)

    # A second event on the cluster: the placeholders are the sum (prewarm.size wins).
    second = await create_event_hub(c, e2, operator="erin")
    assert f"3 -> 8 ({e1}: 3, {e2}: 5)" in second["prewarm"], second["prewarm"]
    assert placeholders(kube_api) == 8

    # Created three days early: deployed, not warmed; a create run warms it at start - 2h.
    early = await create_event_hub(c, e3, operator="erin")
    assert early["prewarm"].startswith("not yet") and placeholders(kube_api) == 8
    assert release(kube, e3) is not None
    runs = await scheduled_event_runs(c, e3)
    (warm_run,) = [r for r in runs if r.kind == "create"]
    assert abs((warm_run.at - (events["ec"]["start"] - timedelta(hours=2))).total_seconds()) < 1

    # Two users had home volumes; the event ends.
    for user in HOMES:
        add_home(kube_api, e1, user)
    kube_fleet.write({**events, "ea": {**events["ea"], "end": now() - timedelta(seconds=1)}})

    # Dry-run expiry: says what it would do, changes nothing.
    would = await expire_event_hub(c, e1, dry_run=True, operator="erin")
    assert "claim-alice, claim-bob" in would["would"] and f"helm uninstall {e1}" in would["would"]
    assert f"to 5 (now 8; {e2}: 5)" in would["placeholders"], would["placeholders"]
    assert release(kube, e1) is not None and namespace_phase(kube_api, e1) == "Active"
    assert placeholders(kube_api) == 8 and bucket_keys(s3, bucket_name) == {}
    assert export_leftovers(kube_api, e1) == []

    # Expire: the Job (played by the stand-in) copies, the flow verifies, then removes.
    stand_in = StandIn(kube_api, e1, s3, HOMES)
    stand_in.start()
    expired = await expire_event_hub(c, e1, operator="erin", export_timeout=120)
    seen = stand_in.finish()
    assert seen["users"] == ["alice", "bob"] and seen["read_only"]
    assert seen["gated"] == [GATE] and seen["image"].startswith("rclone/rclone:")
    assert seen["secret_owner"] == ["Job"]
    assert {"RCLONE_S3_ACCESS_KEY_ID", "RCLONE_S3_SECRET_ACCESS_KEY"} <= set(seen["secret_keys"])
    assert expired["expired"] and expired["export"]["objects"] == 3
    assert expired["export"]["bytes"] == sum(len(d) for h in HOMES.values() for d in h.values())
    prefix = urlparse(expired["export"]["url"]).path.strip("/")
    assert prefix.startswith(f"events/{c}/{e1}/")
    keys = bucket_keys(s3, bucket_name)
    assert keys[f"{prefix}/alice/work/data.bin"] == 256
    manifest = json.loads(
        s3.get_object(Bucket=bucket_name, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    )
    assert manifest["volumes"] == {"alice": "claim-alice", "bob": "claim-bob"}
    assert manifest["files"]["bob/notes.ipynb"] == len(HOMES["bob"]["notes.ipynb"])
    # The release and the namespace are gone; the placeholders are what e2 still needs.
    assert release(kube, e1) is None and namespace_phase(kube_api, e1) is None
    assert placeholders(kube_api) == 5 and expired["placeholders"].endswith(f"({e2}: 5)")
    assert release(kube, e2) is not None and namespace_phase(kube_api, e2) == "Active"
    assert await scheduled_event_runs(c, e1) == []
    # The cloud secret reached the Job's Secret only: no log line, no artifact.
    secret = moto_server.secret_access_key
    async with get_client() as pc:
        logs = await pc.read_logs(LogFilter(), limit=200)
        artifacts = await pc.read_artifacts(limit=200)
    assert all(secret not in log.message for log in logs)
    assert all(secret not in json.dumps(a.data) for a in artifacts)


async def test_failed_export_leaves_the_hub_and_the_reaper_expires_it_later(
    kube_fleet: KubeFleet, kube, kube_api, bucket, export_gate
) -> None:
    s3, bucket_name = bucket
    c, hub = kube_fleet.cluster, kube_fleet.hub("ed")
    start = now() - timedelta(minutes=30)
    kube_fleet.write({"ed": {"start": start, "end": now() + timedelta(hours=1), "attendees": 2}})
    await create_event_hub(c, hub, operator="finn")
    assert placeholders(kube_api) == 2
    add_home(kube_api, hub, "carol")
    homes = {"carol": {"a.txt": b"a", "b.txt": b"bb"}}
    kube_fleet.write({"ed": {"start": start, "end": now() - timedelta(seconds=1), "attendees": 2}})

    # The copy loses a file: verification fails; nothing is removed; the Job is cleaned up.
    stand_in = StandIn(kube_api, hub, s3, homes, short=True)
    stand_in.start()
    with pytest.raises(ExportFailed, match=r"did not verify \(missing 1: carol/b.txt\)") as info:
        await expire_event_hub(c, hub, operator="finn", export_timeout=120)
    stand_in.finish()
    assert "hub was not removed" in str(info.value)
    assert release(kube, hub) is not None and namespace_phase(kube_api, hub) == "Active"
    assert client.CoreV1Api(kube_api).read_namespaced_persistent_volume_claim("claim-carol", hub)
    assert export_leftovers(kube_api, hub) == []
    assert placeholders(kube_api) == 2
    runs = await runs_of("expire_event_hub", f"hub:{c}/{hub}")
    (failed,) = [r for r in runs if r.state.type is not StateType.SCHEDULED]
    assert failed.state.type is StateType.FAILED and "did not verify" in failed.state.message

    # Its scheduled expiry is deleted; the hourly reaper finds the hub by its Helm release.
    (scheduled,) = [r for r in await scheduled_event_runs(c, hub) if r.kind == "expire"]
    async with get_client() as pc:
        await pc.delete_flow_run(UUID(scheduled.id))
    dry = await reap_expired_event_hubs(dry_run=True, operator="finn")
    assert dry["outcome"][f"{c}/{hub}"] == "would expire"
    # The event is over: its placeholders would go even before the expiry (dry run: not yet).
    assert "to 0 (now 2; no warm event)" in dry["placeholders"][c], dry["placeholders"]
    assert release(kube, hub) is not None and export_leftovers(kube_api, hub) == []
    assert placeholders(kube_api) == 2

    stand_in = StandIn(kube_api, hub, s3, homes)
    stand_in.start()
    reaped = await reap_expired_event_hubs(operator="finn")
    stand_in.finish()
    assert reaped["outcome"][f"{c}/{hub}"] == "expired"
    assert reaped["placeholders"][c] == f"{c}'s placeholders stay at 0 (no warm event)"
    assert release(kube, hub) is None and namespace_phase(kube_api, hub) is None
    assert placeholders(kube_api) == 0
    # The short copy never wrote b.txt: this one is the reaper's export.
    assert any(k.endswith("/carol/b.txt") for k in bucket_keys(s3, bucket_name))
    again = await reap_expired_event_hubs(operator="finn")
    assert again["outcome"][f"{c}/{hub}"] == "gone"


async def test_standing_hub_on_kubernetes_is_refused_untouched(
    kube_fleet: KubeFleet, kube, kube_api
) -> None:
    c, hub = kube_fleet.cluster, kube_fleet.hub("s")
    kube_fleet.write({}, standing=("s",))
    await deploy_hub(c, hub, gate="rollout", operator="gus")
    revision = release(kube, hub)
    with pytest.raises(NotExpirable, match=rf"{c}/{hub} is a standing hub, not an event hub"):
        await expire_event_hub(c, hub, operator="gus")
    with pytest.raises(NotExpirable, match="standing hub"):
        await create_event_hub(c, hub, operator="gus")
    assert release(kube, hub) == revision and namespace_phase(kube_api, hub) == "Active"
    assert export_leftovers(kube_api, hub) == []
