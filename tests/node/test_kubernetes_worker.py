"""The Prefect Kubernetes work pool, for real: a `prefect worker start --type kubernetes`
process (prefect-kubernetes) runs a hubfleet operation as a Job on the real node, from the
worker image built here (hubimages.py, `worker`), against a real Prefect server.

What runs: a Prefect server of this module's own (`hubfleet setup` registers deployments
and automations on it, which must not touch the session's shared server); a kubernetes pool
made from deployments/kubernetes-work-pool.json as an operator would (their image, their
namespace, the API URL their pods reach, the node placement); `hubfleet setup --pool` on
it; the worker on the host with a kubeconfig for the test API server. The pod reaches the
server, which listens on loopback only, through `RealNode.relay` (10.213.0.1, the host end
of the node's veth: nothing outside this machine is involved). The server's credential goes
to the pod only as a Kubernetes Secret reference (prefect-kubernetes'
PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_*), and the test scans the
Job, the pod's spec and env, its log, the worker's log and the run's logs for it.

The operation is `publish_fleet_report`: it reads the run history and the fleet (the one
baked into the image, at /opt/hubfleet/fleet) and publishes an artifact, all through the
API from inside the pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hubfleet.paths import WORKER_IMAGE_FLEET, WORKER_IMAGE_ROOT
from hubfleet.server import PrefectServer, any_free_port
from testenv import build, hubimages
from testenv.images import ImageArchive
from testenv.node import POD_PLACEMENT

pytestmark = [pytest.mark.kube, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]
HUBFLEET = str(Path(sys.executable).parent / "hubfleet")
POOL = "hubfleet-k8s"
SERVICE_ACCOUNT = "hubfleet-deployer"
AUTH_SECRET, AUTH_KEY = "hubfleet-prefect-api", "auth-string"
#: This module's figures (the image's build, size and import; the run's timings).
RESULTS = REPO / "benchmarks" / "results" / "kubernetes_worker.json"
FIGURES: dict[str, Any] = {}


def _say(msg: str) -> None:
    print(f"[kubernetes worker] {msg}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="module")
def worker_image(real_node, prefect_server) -> ImageArchive:
    """The worker image (built if this checkout's key is new), imported into the node;
    built while this session's server credential is in the environment (see
    `test_worker_image_and_its_build_logs_hold_no_credential`)."""
    cached = hubimages.archive_path("worker").exists()
    t0 = time.monotonic()
    try:
        image = hubimages.build_image("worker", progress=_say)
    except Exception as e:  # an ImageBuildError names the command and its output
        pytest.fail(f"building the worker image failed: {e}", pytrace=False)
    built = time.monotonic() - t0
    t1 = time.monotonic()
    real_node.import_image(image)
    recorded = build.build_times().get("image-worker", {}).get("seconds")
    FIGURES["image"] = {
        "ref": image.ref,
        "built_now": not cached,
        "build_seconds": round(built, 1) if not cached else None,
        "last_recorded_build_seconds": recorded,
        "size_mb": round(image.path.stat().st_size / 1e6),
        "import_seconds": round(time.monotonic() - t1, 1),
    }
    _say(
        f"worker image {image.ref}: {'cached' if cached else f'built in {built:.1f}s'} "
        f"(last build {recorded}s), {image.path.stat().st_size / 1e6:.0f} MB, imported in "
        f"{time.monotonic() - t1:.1f}s"
    )
    return image


@pytest.fixture(scope="module")
def k8s_server(no_leftover_processes: Path) -> Iterator[PrefectServer]:
    """A Prefect server of this module's own (authentication on, as hubfleet runs it)."""
    server = PrefectServer(no_leftover_processes / "k8s-worker-prefect", port=any_free_port())
    server.ensure(progress=lambda *_: None)
    try:
        yield server
    finally:
        server.stop()


def _layer_names(archive: Path, index: int) -> set[str]:
    """The paths in one layer of a one-image OCI archive, read as a stream (the worker
    image's layer is about a gigabyte)."""
    import tarfile

    with tarfile.open(archive) as outer:

        def member(digest: str):
            f = outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert f is not None
            return f

        index_file = outer.extractfile("index.json")
        assert index_file is not None
        (desc,) = json.load(index_file)["manifests"]
        manifest = json.load(member(desc["digest"]))
        with tarfile.open(fileobj=member(manifest["layers"][index]["digest"])) as layer:
            return set(layer.getnames())


def test_worker_image_is_this_checkout_on_the_base_without_host_details(worker_image):
    from testenv import rootfs

    base = hubimages._archive_layers(rootfs.build_debian_base().path)
    assert len(base) == 1
    # Layers: the Debian base, the dependencies (worker-deps), this checkout.
    deps, code = _layer_names(worker_image.path, 1), _layer_names(worker_image.path, 2)
    names = deps | code
    root = WORKER_IMAGE_ROOT.lstrip("/")
    copied = {f"{root}/{rel}" for rel in hubimages.source_files(hubimages.WORKER_SOURCES)}
    assert copied <= code and not [n for n in deps if n.startswith(f"{root}/")]
    assert f"{root}/fleet/.hubfleet-revision" in code
    assert "opt/venv/bin/prefect" in deps and "opt/venv/bin/hubfleet" in code
    # An edit of the code rebuilds only the top layer: it holds no dependency.
    assert not [n for n in code if ".dist-info/" in n and "/hubfleet-" not in n]
    for host_file in (
        "etc/resolv.conf",
        "etc/hostname",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/pip.conf",
        "root/.gitconfig",
    ):
        assert host_file not in names
    assert not [n for n in names if n.startswith(("tmp/", "root/.cache/", f"{root}/tests"))]
    assert not [n for n in names if "/.git/" in n or n.endswith("/.git")]


def test_worker_image_and_its_build_logs_hold_no_credential(worker_image):
    """The image was built by this session, which holds its Prefect server's credential in
    the environment (as an operator's shell may hold one): it is in neither build log, nor
    in the checkout's layer (the dependencies' layer is pip's output, built offline in a
    clean environment; its log is scanned)."""
    credential = os.environ["PREFECT_API_AUTH_STRING"]
    password = credential.split(":", 1)[1]
    logs = [build.cache_dir() / "logs" / f"image-{name}.log" for name in ("worker-deps", "worker")]
    scanned = {log.name: log.read_text(errors="replace") for log in logs if log.exists()}
    assert "image-worker.log" in scanned, logs  # its top layer was built at least once here
    assert not [name for name, text in scanned.items() if password in text]
    import tarfile

    with tarfile.open(worker_image.path) as outer:
        index_file = outer.extractfile("index.json")
        assert index_file is not None
        (desc,) = json.load(index_file)["manifests"]
        manifest_file = outer.extractfile(f"blobs/sha256/{desc['digest'].split(':', 1)[1]}")
        assert manifest_file is not None
        top = json.load(manifest_file)["layers"][-1]["digest"].split(":", 1)[1]
        layer = outer.extractfile(f"blobs/sha256/{top}")
        assert layer is not None
        assert password.encode() not in layer.read()


def pool_template(image: str, namespace: str, api_url: str) -> dict[str, Any]:
    """deployments/kubernetes-work-pool.json as an operator fills it in for their cluster:
    the worker image, the Jobs' namespace, the API URL pods reach; and, for this cluster,
    the real node's placement (its taint keeps other pods off it)."""
    template = json.loads((REPO / "deployments" / "kubernetes-work-pool.json").read_text())
    props = template["variables"]["properties"]
    props["image"]["default"] = image
    props["image_pull_policy"]["default"] = "Never"  # no registry: the image is imported
    props["namespace"]["default"] = namespace
    props["env"]["default"] = props["env"]["default"] | {"PREFECT_API_URL": api_url}
    props["finished_job_ttl"]["default"] = None  # the test reads the finished Job
    pod_spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod_spec.update(POD_PLACEMENT)
    return template


def _env(server: PrefectServer, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the worker and the CLI: only what they need. (Every PREFECT_
    setting in the worker's environment is copied into the Jobs it creates; PREFECT_HOME is
    left to follow HOME, so it is not one of them.)"""
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HUBFLEET_DATA_DIR": os.environ["HUBFLEET_DATA_DIR"],
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": server.credential(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


class Worker:
    """`prefect worker start --type kubernetes`, started and stopped by PID."""

    def __init__(self, env: dict[str, str], log: Path, name: str) -> None:
        self.log = log
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL),
                    *("--type", "kubernetes", "--name", name),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


async def _wait_final(run_id: Any, worker: Worker, timeout: float) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as prefect:
        while True:
            run = await prefect.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            if worker.proc.poll() is not None:
                pytest.fail(
                    f"the worker exited ({worker.proc.returncode}):\n{worker.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"run not final after {timeout:g}s ({run.state.name if run.state else '-'});"
                    f" worker log tail:\n{worker.text()[-3000:]}"
                )
            await asyncio.sleep(1)


async def test_kubernetes_worker_runs_an_operation_as_a_job_on_the_real_node(
    real_node, kube, kube_api, kube_namespace, worker_image, k8s_server, tmp_path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    t_test = time.monotonic()
    credential = k8s_server.credential()
    port = int(k8s_server.api_url.rsplit(":", 1)[1].split("/", 1)[0])
    pod_api = f"http://{real_node.relay(port)}/api"
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_service_account(ns, {"metadata": {"name": SERVICE_ACCOUNT}})
    # What an operator does once per cluster (kubectl create secret): the Jobs' credential.
    core.create_namespaced_secret(
        ns,
        {"metadata": {"name": AUTH_SECRET}, "type": "Opaque", "stringData": {AUTH_KEY: credential}},
    )
    worker: Worker | None = None
    settings = {PREFECT_API_URL: k8s_server.api_url, PREFECT_API_AUTH_STRING: credential}
    try:
        with temporary_settings(settings):
            async with get_client() as prefect:
                await prefect.create_work_pool(
                    WorkPoolCreate(
                        name=POOL,
                        type="kubernetes",
                        base_job_template=pool_template(worker_image.ref, ns, pod_api),
                    )
                )
            t_setup = time.monotonic()
            setup = subprocess.run(
                [HUBFLEET, "setup", "--pool", POOL, "--fleet", str(REPO / "fleet")],
                env=_env(k8s_server, tmp_path / "home"),
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp_path,
            )
            assert setup.returncode == 0, setup.stdout + setup.stderr
            setup_seconds = time.monotonic() - t_setup
            assert "has no default image" not in setup.stdout + setup.stderr
            async with get_client() as prefect:
                dep = await prefect.read_deployment_by_name("publish_fleet_report/default")
            # Laid out for the image, not this machine's checkout.
            assert dep.work_pool_name == POOL
            assert dep.pull_steps == [
                {
                    "prefect.deployments.steps.set_working_directory": {
                        "directory": WORKER_IMAGE_ROOT
                    }
                }
            ]
            assert dep.job_variables["env"]["HUBFLEET_FLEET"] == WORKER_IMAGE_FLEET

            worker_env = _env(
                k8s_server,
                tmp_path / "home",
                KUBECONFIG=str(kube.kubeconfig),
                PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME=AUTH_SECRET,
                PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY=AUTH_KEY,
            )
            worker = Worker(worker_env, tmp_path / "worker.log", "kw-test")
            async with get_client() as prefect:
                t_submit = time.monotonic()
                created = await prefect.create_flow_run_from_deployment(
                    dep.id, parameters={"since": "1d"}
                )
            run = await _wait_final(created.id, worker, timeout=300)
            submit_to_final = time.monotonic() - t_submit

            jobs = batch.list_namespaced_job(
                ns, label_selector=f"prefect.io/flow-run-id={created.id}"
            ).items
            selector = f"prefect.io/flow-run-id={created.id}"
            deadline = time.monotonic() + 60  # the container exits just after the state
            while True:
                pods = core.list_namespaced_pod(ns, label_selector=selector).items
                done = all(p.status.phase in ("Succeeded", "Failed") for p in pods)
                if (pods and done) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            pod_logs = {
                p.metadata.name: core.read_namespaced_pod_log(p.metadata.name, ns) for p in pods
            }
            assert run.state.name == "Completed", (
                f"{run.state.name}: {run.state.message}\npods: {pod_logs}\n"
                f"worker log tail:\n{worker.text()[-3000:]}"
            )

            # The Job ran on the real node, from the worker image, and finished there.
            assert len(jobs) == 1 and len(pods) == 1, ([j.metadata.name for j in jobs], pods)
            (pod,) = pods
            assert pod.spec.node_name == real_node.name
            assert pod.status.phase == "Succeeded"
            (container,) = pod.spec.containers
            assert container.image == worker_image.ref
            assert pod.spec.service_account_name == SERVICE_ACCOUNT

            # The run is in the history with hubfleet's tags, and did its work in the pod.
            tags = set(run.tags)
            assert {"hubfleet", "op:publish_fleet_report"} <= tags, tags
            assert f"revision:{hubimages.fleet_commit()}" in tags, tags
            assert any(t.startswith("operator:") for t in tags), tags
            async with get_client() as prefect:
                artifacts = await prefect.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[created.id])
                    )
                )
                run_logs = await prefect.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[created.id])), limit=200
                )
            assert [a.key for a in artifacts] == ["fleet-ops-report"]
            assert any("publish_fleet_report on the fleet by" in log.message for log in run_logs)
            audit = subprocess.run(
                [HUBFLEET, "audit", "--op", "publish_fleet_report", "--format", "json"],
                env=_env(k8s_server, tmp_path / "home", HUBFLEET_FLEET=str(REPO / "fleet")),
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
            assert audit.returncode == 0, audit.stderr
            (row,) = [r for r in json.loads(audit.stdout) if r["url"].endswith(str(created.id))]
            assert row["outcome"] == "Completed"

            # The credential reached the pod as a Secret reference only, and nothing the
            # run, the pod or the worker left holds its value.
            env = {e.name: e for e in container.env}
            ref = env["PREFECT_API_AUTH_STRING"].value_from.secret_key_ref
            assert (ref.name, ref.key) == (AUTH_SECRET, AUTH_KEY)
            assert env["PREFECT_API_AUTH_STRING"].value is None
            assert env["PREFECT_API_URL"].value == pod_api
            manifests = json.dumps(
                [kube_api.sanitize_for_serialization(o) for o in (*jobs, pod)], default=str
            )
            texts = {
                "job and pod manifests": manifests,
                "pod log": "\n".join(pod_logs.values()),
                "worker log": worker.text(),
                "run logs": "\n".join(log.message for log in run_logs),
                "run parameters and state": f"{run.parameters} {run.state}",
            }
            leaks = [where for where, text in texts.items() if credential in text]
            assert leaks == [], f"the API credential appears in: {leaks}"
            password = credential.split(":", 1)[1]
            assert not [where for where, text in texts.items() if password in text]
    finally:
        if worker is not None:
            worker.stop()
        real_node.stop_relay(port)
    test_seconds = time.monotonic() - t_test
    FIGURES["run"] = {
        "hubfleet_setup_seconds": round(setup_seconds, 1),
        "submit_to_completed_seconds": round(submit_to_final, 1),
        "test_seconds": round(test_seconds, 1),
        "node": real_node.name,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(FIGURES, indent=2) + "\n")
    _say(
        f"setup {setup_seconds:.1f}s; run Completed {submit_to_final:.1f}s after it was "
        f"submitted (pod on {real_node.name}); test {test_seconds:.1f}s; figures in {RESULTS}"
    )
