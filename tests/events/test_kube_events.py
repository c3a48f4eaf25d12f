"""Event hubs on Kubernetes: pre-warm placeholders, and expiry of Helm-deployed hubs.

Real: the Prefect server (event deployments registered as `hubfleet setup` does), helm 3,
the hub and support charts, kube-apiserver + controller-manager + scheduler, kwok (pods
Running/Ready; Job pods Succeeded), the export Job's own script run with rclone built at the
Job image's version, writing to moto's S3 (auth enforced), logged in only through the
credentials block (endpoint included, via `credential_env` and the Job's Secret); the flow's
verification reads back with the real boto3. The Job itself, as a pod of the rclone image on
the real node, to S3 and to Azure blob (Azurite): tests/node/test_export_on_node.py.

Fakes, only where nothing real can run here:
- kwok pods serve no HTTP, so the post-deploy health gate is replaced (`hub_health` returns
  healthy, marked "injected"), as in tests/helm. The expiry's health snapshot runs for real
  (and says down).
- No container runs on kwok, so `StandIn` plays the kubelet for the export Job's pods: it
  runs the container's command with the container's env and the Job's Secret, the real
  rclone on PATH, as the pod's user, with the users' files in a temp dir instead of the
  mounted volumes (the only substitution: `$HUBFLEET_HOMES`, see `StandIn`). Then it lets
  the pod be scheduled (kwok completes it) or, if the script failed, marks the pod Failed.
  The pod is held back by a scheduling gate that a test-only MutatingAdmissionPolicy adds
  to export pods (`export_gate`): without it kwok would complete the Job before anything
  was copied.
- The users' files exist only in the test (kwok volumes hold no data); their PVCs are real.
- GCS is not run here: `GcpCredentials` has no endpoint to hand rclone (the GCS fake of
  tests/events/test_export.py is reached through STORAGE_EMULATOR_HOST, which rclone does
  not read), and that fake serves only the two calls our Python client makes, not the
  object/bucket reads and the token exchange rclone needs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
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
)
from prefect.client.schemas.objects import StateType
from waiting import wait_for

from blocks.cluster_access import ClusterAccess
from flows import deploy_hub as deploy_hub_mod
from flows.deploy_hub import deploy_hub
from flows.event_hubs import (
    create_event_hub,
    expire_event_hub,
    reap_expired_event_hubs,
)
from hubfleet.events import NotExpirable
from hubfleet.health import Verdict
from hubfleet.results import Expiry, HubHealth, Reaped
from tasks.event_schedule import scheduled_event_runs
from tasks.export import MANIFEST, ExportFailed
from tasks.helm import Helm
from tasks.kube_export import EXPORT_LABEL, HOMES_ROOT, RCLONE_VERSION, SOURCE_LISTING
from testenv import history
from testenv.node import REAL_NODE_NAMESPACE_LABEL

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server", "event_deployments")]

GATE = "hubfleet.test/export-stand-in"
PLACEHOLDERS = ("hubfleet-support-user-placeholder", "hubfleet-system")
CREDENTIALS_BLOCK = "aws-kube-export"


def now() -> datetime:
    return datetime.now(UTC)


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
                # Not where pods run on the real node (tests/node): a real kubelet runs those.
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": REAL_NODE_NAMESPACE_LABEL, "operator": "DoesNotExist"}
                    ]
                },
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
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
            "name: test-fleet\nparallelism: 2\nchart_version: 4.4.0\n"
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
            # A prod hub needs a login (hubfleet.auth): nobody logs in here (null).
            (d / f"{hub['name']}.values.yaml").write_text(
                "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
            )
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

    async def healthy(op: Any) -> HubHealth:
        return HubHealth(
            hub=op.target,
            url=None,
            depth="shallow",
            verdict=Verdict.healthy,
            level="",
            reason="injected: nothing answers behind a kwok pod",
        )

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


@pytest.fixture(scope="session")
def rclone_bin_dir(rclone: Path) -> Iterator[Path]:
    """A directory holding `rclone` (the binary built at the Job image's version) that the
    Job's user (uid 1000) can reach: the tool cache under the home directory may not be."""
    d = Path(tempfile.mkdtemp(prefix="hubfleet-rclone-"))
    d.chmod(0o755)
    try:
        os.link(rclone, d / "rclone")
    except OSError:  # another filesystem
        shutil.copy2(rclone, d / "rclone")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class StandIn(threading.Thread):
    """Plays the kubelet and the export Job's container (nothing runs in a kwok pod).

    For each pod of the Job (held by the test's scheduling gate) it does what the kubelet
    would: takes the container's `command`/`args` and `env`, with `envFrom` read from the
    Job's Secret through the Kubernetes API (env wins over envFrom, as in a pod); lays out
    the mounted users' files (`homes`, test data: kwok volumes hold none) in a temp dir, one
    directory per volume mount; and runs the command with the real rclone (built at the
    image's version) first on PATH, as the pod's `runAsUser`/`runAsGroup` when the test runs
    as root. The one substitution: the mount root. The Job's script reads it from
    `$HUBFLEET_HOMES` (`/homes` in the spec), which the stand-in sets to the temp dir; the
    script text is run unchanged. Exit 0: the gate is removed and kwok completes the pod, so
    the Job succeeds. Otherwise the pod's status is set to Failed with the exit code (as the
    kubelet reports a failed container), and the Job controller retries or fails the Job.

    `unreadable`: paths (`user/file`) created with mode 000, a file the Job's user cannot
    read. With root-run tests this needs the user switch above; otherwise the owner cannot
    read a mode 000 file either.
    """

    def _secret(self, core: Any, name: str) -> Any:
        try:
            return core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def __init__(
        self,
        kube_api,
        namespace: str,
        homes: dict[str, dict[str, bytes]],
        bin_dir: Path,
        unreadable: tuple[str, ...] = (),
    ):
        super().__init__(daemon=True)
        self.kube_api, self.namespace, self.homes = kube_api, namespace, homes
        self.bin_dir, self.unreadable = bin_dir, unreadable
        self.seen: dict[str, Any] = {"runs": []}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> dict[str, Any]:
        self.join(120)
        assert not self.is_alive(), "the stand-in did not finish within 120s"
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
        name = job.metadata.name
        container = job.spec.template.spec.containers[0]
        secret_name = container.env_from[0].secret_ref.name
        # The flow creates the Job, then the Secret the Job owns from its creation: a reader
        # that sees the Job may look a moment before the Secret exists.
        secret: Any = wait_for(
            "the export Secret", lambda: self._secret(core, secret_name), timeout=30
        )
        self.seen.update(
            job=name,
            read_only=all(m.read_only for m in container.volume_mounts),
            secret_keys=sorted(secret.data or {}),
            secret_owner=[o.kind for o in secret.metadata.owner_references or []],
            image=container.image,
        )
        done: set[str] = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                current: Any = batch.read_namespaced_job_status(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:  # the flow deleted it: finished
                    return
                raise
            if any(
                c.type in ("Complete", "Failed") and c.status == "True"
                for c in current.status.conditions or []
            ):
                return
            pods: Any = core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}")
            for pod in pods.items:
                gated = [g.name for g in pod.spec.scheduling_gates or []]
                if pod.metadata.uid in done or GATE not in gated:
                    continue
                done.add(pod.metadata.uid)
                self.seen["gated"] = gated
                self._run_pod(core, pod)
            time.sleep(0.5)
        raise AssertionError(f"export Job {name} did not finish within 240s")

    def _env(self, core: Any, container: Any) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.env_from or []:
            assert source.secret_ref, f"stand-in cannot play envFrom {source}"
            sec: Any = core.read_namespaced_secret(source.secret_ref.name, self.namespace)
            for key, value in (sec.data or {}).items():
                env[(source.prefix or "") + key] = base64.b64decode(value).decode()
        for var in container.env or []:
            assert var.value_from is None, f"stand-in cannot play valueFrom {var}"
            env[var.name] = var.value or ""
        return env

    def _run_pod(self, core: Any, pod: Any) -> None:
        spec = pod.spec
        (container,) = spec.containers
        env = self._env(core, container)
        env["PATH"] = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin"
        root = Path(tempfile.mkdtemp(prefix="hubfleet-homes-"))
        try:
            root.chmod(0o755)
            # The one substitution: the mount root (/homes in the Job) is the temp dir.
            assert env.get("HUBFLEET_HOMES") == HOMES_ROOT, env.get("HUBFLEET_HOMES")
            env["HUBFLEET_HOMES"] = str(root)
            users = []
            for mount in container.volume_mounts:
                assert mount.mount_path.startswith(HOMES_ROOT + "/"), mount.mount_path
                user = mount.mount_path.removeprefix(HOMES_ROOT + "/")
                users.append(user)
                self._lay_out(root / user, user)
            ctx = spec.security_context
            as_user: dict[str, Any] = {}
            if os.geteuid() == 0 and ctx is not None and ctx.run_as_user is not None:
                as_user = {"user": ctx.run_as_user, "group": ctx.run_as_group}
                if ctx.fs_group is not None:
                    as_user["extra_groups"] = [ctx.fs_group]
            proc = subprocess.run(
                [*(container.command or []), *(container.args or [])],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=120,
                **as_user,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self.seen["users"] = sorted(users)
        self.seen["runs"].append({"exit": proc.returncode, "output": proc.stdout + proc.stderr})
        if proc.returncode == 0:
            # Done copying: let the pod run (kwok completes it; the Job succeeds).
            core.patch_namespaced_pod(
                pod.metadata.name,
                self.namespace,
                [{"op": "remove", "path": "/spec/schedulingGates"}],
            )
            return
        stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {
            "exitCode": proc.returncode,
            "reason": "Error",
            "startedAt": stamp,
            "finishedAt": stamp,
        }
        core.patch_namespaced_pod_status(
            pod.metadata.name,
            self.namespace,
            {
                "status": {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"terminated": terminated},
                        }
                    ],
                }
            },
        )

    def _lay_out(self, home: Path, user: str) -> None:
        home.mkdir(mode=0o755)
        for rel, data in self.homes.get(user, {}).items():
            path = home / rel
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o000 if f"{user}/{rel}" in self.unreadable else 0o644)


HOMES = {
    "alice": {"results.txt": b"42 attendees, 0 crashes\n", "work/data.bin": bytes(range(256))},
    "bob": {"notes.ipynb": b'{"cells": []}'},
}


# --- the tests ------------------------------------------------------------------------------


async def test_prewarm_sums_events_and_expiry_exports_then_removes_the_hub(
    kube_fleet: KubeFleet, kube, kube_api, bucket, export_gate, moto_server, rclone_bin_dir
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
    assert f"would set {c}'s placeholders to 3" in dry.prewarm, dry.prewarm
    assert release(kube, e1) is None and placeholders(kube_api) == before

    # Create: the hub is deployed and the cluster warms one placeholder per attendee.
    created = await create_event_hub(c, e1, operator="erin")
    assert created.deploy.action == "install"
    assert f"-> 3 ({e1}: 3)" in created.prewarm, created.prewarm
    assert placeholders(kube_api) == 3
    wait_for("3 ready placeholders", lambda: ready_placeholders(kube_api) == 3, 60)

    # A second event on the cluster: the placeholders are the sum (prewarm.size wins).
    second = await create_event_hub(c, e2, operator="erin")
    assert f"3 -> 8 ({e1}: 3, {e2}: 5)" in second.prewarm, second.prewarm
    assert placeholders(kube_api) == 8

    # Created three days early: deployed, not warmed; a create run warms it at start - 2h.
    early = await create_event_hub(c, e3, operator="erin")
    assert early.prewarm.startswith("not yet") and placeholders(kube_api) == 8
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
    assert "claim-alice, claim-bob" in would.would and f"helm uninstall {e1}" in would.would
    assert f"to 5 (now 8; {e2}: 5)" in would.placeholders, would.placeholders
    assert release(kube, e1) is not None and namespace_phase(kube_api, e1) == "Active"
    assert placeholders(kube_api) == 8 and bucket_keys(s3, bucket_name) == {}
    assert export_leftovers(kube_api, e1) == []

    # Expire: the Job's script runs with the real rclone (the stand-in plays the kubelet),
    # copying to moto with the block's endpoint and keys; the flow verifies, then removes.
    stand_in = StandIn(kube_api, e1, HOMES, rclone_bin_dir)
    stand_in.start()
    expired = await expire_event_hub(c, e1, operator="erin", export_timeout=120)
    seen = stand_in.finish()
    assert [r["exit"] for r in seen["runs"]] == [0], seen["runs"]
    assert seen["users"] == ["alice", "bob"] and seen["read_only"]
    assert seen["gated"] == [GATE] and seen["image"] == f"rclone/rclone:{RCLONE_VERSION}"
    assert seen["secret_owner"] == ["Job"]
    assert {"RCLONE_S3_ACCESS_KEY_ID", "RCLONE_S3_SECRET_ACCESS_KEY", "RCLONE_S3_ENDPOINT"} <= set(
        seen["secret_keys"]
    )
    assert expired.outcome is Expiry.expired and expired.export.objects == 3
    assert expired.export.bytes == sum(len(d) for h in HOMES.values() for d in h.values())
    prefix = urlparse(expired.export.url).path.strip("/")
    assert prefix.startswith(f"events/{c}/{e1}/")
    keys = bucket_keys(s3, bucket_name)
    # Exactly the homes (rclone's copy), the Job's listing (uploaded last) and the manifest.
    assert {k.removeprefix(f"{prefix}/"): v for k, v in keys.items()} == {
        **{f"{u}/{f}": len(d) for u, h in HOMES.items() for f, d in h.items()},
        SOURCE_LISTING: keys[f"{prefix}/{SOURCE_LISTING}"],
        MANIFEST: keys[f"{prefix}/{MANIFEST}"],
    }
    data = s3.get_object(Bucket=bucket_name, Key=f"{prefix}/alice/work/data.bin")["Body"].read()
    assert data == HOMES["alice"]["work/data.bin"]
    manifest = json.loads(
        s3.get_object(Bucket=bucket_name, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    )
    assert manifest["volumes"] == {"alice": "claim-alice", "bob": "claim-bob"}
    assert manifest["files"]["bob/notes.ipynb"] == len(HOMES["bob"]["notes.ipynb"])
    # The release and the namespace are gone; the placeholders are what e2 still needs.
    assert release(kube, e1) is None and namespace_phase(kube_api, e1) is None
    assert placeholders(kube_api) == 5 and expired.placeholders.endswith(f"({e2}: 5)")
    assert release(kube, e2) is not None and namespace_phase(kube_api, e2) == "Active"
    assert await scheduled_event_runs(c, e1) == []
    # The cloud secret reached the Job's Secret only: no log line, no artifact.
    secret = moto_server.secret_access_key
    logs, artifacts = await history.logs(1000), await history.artifacts(limit=500)
    assert all(secret not in log.message for log in logs)
    assert all(secret not in json.dumps(a.data) for a in artifacts)


async def test_failed_export_leaves_the_hub_and_the_reaper_expires_it_later(
    kube_fleet: KubeFleet, kube, kube_api, bucket, export_gate, rclone_bin_dir
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

    # carol has a file the Job's user (jovyan, uid 1000) cannot read: rclone lists it but
    # cannot copy it and exits non-zero, so each pod fails; after backoffLimit retries the
    # Job fails. Nothing is removed; the Job is cleaned up; the listing was never uploaded.
    stand_in = StandIn(kube_api, hub, homes, rclone_bin_dir, unreadable=("carol/b.txt",))
    stand_in.start()
    with pytest.raises(ExportFailed, match=r"export Job .* failed \(BackoffLimitExceeded") as info:
        await expire_event_hub(c, hub, operator="finn", export_timeout=150)
    seen = stand_in.finish()
    assert "hub was not removed" in str(info.value)
    assert len(seen["runs"]) == 3, seen["runs"]  # the first pod and backoffLimit (2) retries
    for run in seen["runs"]:
        assert run["exit"] != 0 and "b.txt" in run["output"], run
        assert "permission denied" in run["output"], run
    assert not any(
        k.endswith(SOURCE_LISTING) or k.endswith(MANIFEST) for k in bucket_keys(s3, bucket_name)
    )
    assert release(kube, hub) is not None and namespace_phase(kube_api, hub) == "Active"
    assert client.CoreV1Api(kube_api).read_namespaced_persistent_volume_claim("claim-carol", hub)
    assert export_leftovers(kube_api, hub) == []
    assert placeholders(kube_api) == 2
    runs = await runs_of("expire_event_hub", f"hub:{c}/{hub}")
    (failed,) = [r for r in runs if r.state.type is not StateType.SCHEDULED]
    assert failed.state.type is StateType.FAILED and "BackoffLimitExceeded" in failed.state.message

    # Its scheduled expiry is deleted; the hourly reaper finds the hub by its Helm release.
    (scheduled,) = [r for r in await scheduled_event_runs(c, hub) if r.kind == "expire"]
    async with get_client() as pc:
        await pc.delete_flow_run(UUID(scheduled.id))
    dry = await reap_expired_event_hubs(dry_run=True, operator="finn")
    assert dry.hubs[f"{c}/{hub}"] is Reaped.would_expire
    # The event is over: its placeholders would go even before the expiry (dry run: not yet).
    assert "to 0 (now 2; no warm event)" in dry.placeholders[c], dry.placeholders
    assert release(kube, hub) is not None and export_leftovers(kube_api, hub) == []
    assert placeholders(kube_api) == 2

    # carol fixed her file's permissions; the reaper's export copies everything.
    stand_in = StandIn(kube_api, hub, homes, rclone_bin_dir)
    stand_in.start()
    reaped = await reap_expired_event_hubs(operator="finn")
    assert [r["exit"] for r in stand_in.finish()["runs"]] == [0]
    assert reaped.hubs[f"{c}/{hub}"] is Reaped.expired
    assert reaped.placeholders[c] == f"{c}'s placeholders stay at 0 (no warm event)"
    assert release(kube, hub) is None and namespace_phase(kube_api, hub) is None
    assert placeholders(kube_api) == 0
    # The failed copies never wrote b.txt: this one is the reaper's export.
    assert any(k.endswith("/carol/b.txt") for k in bucket_keys(s3, bucket_name))
    again = await reap_expired_event_hubs(operator="finn")
    assert again.hubs[f"{c}/{hub}"] is Reaped.gone


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


async def test_export_to_a_missing_bucket_is_refused_before_anything_changes(
    kube_api, kube_namespace: str, event_pvs, bucket
) -> None:
    """rclone would create an S3 bucket that does not exist, so a typo in the export URL
    would send users' homes somewhere new. The export checks the bucket with hubfleet's own
    client first (moto, auth enforced): missing → refused before a user server is stopped or
    a Job is created."""
    from prefect import flow

    from tasks.kube_export import USER_SERVER_SELECTOR, export_homes_with_job

    s3, existing = bucket
    add_home(kube_api, kube_namespace, "frank")
    key, _, value = USER_SERVER_SELECTOR.partition("=")
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        kube_namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="jupyter-frank", labels={key: value}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="nb", image="x:1")]),
        ),
    )
    missing = f"{existing}-typo"

    @flow
    async def export() -> Any:
        url = f"s3://{missing}/events/S"
        return await export_homes_with_job(
            kube_api, kube_namespace, url, CREDENTIALS_BLOCK, "s1", 60
        )

    refused = f"export to s3://{missing}/events/S failed: NoSuchBucket"
    with pytest.raises(ExportFailed, match=refused):
        await export()
    assert missing not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    pod = core.read_namespaced_pod("jupyter-frank", kube_namespace)
    assert pod.metadata.deletion_timestamp is None  # the user server was not stopped
    assert export_leftovers(kube_api, kube_namespace) == []
