"""Benchmark: the real test node (kubelet, containerd, kube-proxy; testenv/node.py).

* Cold build: what the build step recorded in ``<cache>/build-times.json`` for the node's
  parts (kubelet + kube-proxy, containerd, local-path-provisioner, the images). Those
  figures depend on how busy the machine was; the build records them as they happened.
* Warm start, N times: ``ControlPlane.start()`` then ``RealNode.start()`` until the node
  is Ready and kube-proxy has synced; then a busybox pod from create to Running; then
  the stop of both. Target (issue 14): the cluster with the real node up in <= 20 s warm.
* Deploy to healthy, N times: hubfleet's own ``deploy_hub(cluster, hub, gate="auto")``
  installing a new hub (a release of the upstream Zero to JupyterHub chart, through
  hubfleet's wrapper) on the real node, timed from the call to its return: helm
  ``--atomic --wait``, the ops token minted in the hub pod, then the health gate (rollout
  through the Kubernetes API, then reachable → api → auth through a port-forward, the
  cluster's ``hub_access: port-forward``). Exactly the setup of
  tests/node/test_deploy_on_node.py: one ``provider: kubeconfig`` cluster whose
  ``cluster.values.yaml`` is ``testenv.nodevalues``, the hub, proxy and
  single-user images built here and imported into the node, the chart served on loopback
  from ``../shared/charts``. Each run is a new hub name, uninstalled (and its namespace
  deleted) after. Target (issue 14): <= 60 s warm.
* For comparison, in the same run: the local provider's deploy to healthy (a JupyterHub
  and configurable-http-proxy process pair on this machine; its gate is always on),
  ``deploy_hub(cluster, hub)`` on a ``provider: local`` cluster, each run a new hub,
  stopped after. Measured before the control plane and node start, so they do not load it.

Both deploy measurements run against a temporary Prefect server (SQLite, authentication
on, ``hubfleet.server.PrefectServer``, as the tests use) with ``HUBFLEET_DATA_DIR`` in a
temporary directory; the script stops the server, the hubs, the node and the control plane
(by PID) whatever happens. The machine's load average and whether the hub images were
already built (cached) are recorded beside the figures.

Writes ``benchmarks/results/real_node.json`` and prints the figures.

    python benchmarks/bench_real_node.py [--runs 3] [--deploy-runs N] [--skip-warm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# As tests/conftest.py: a busy 2-core machine makes the SQLite server wait on its write lock.
os.environ.setdefault("PREFECT_API_DATABASE_TIMEOUT", "60")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")

from hubfleet.results import HubDeployed  # noqa: E402
from testenv import build, hubimages, images  # noqa: E402
from testenv.controlplane import ControlPlane  # noqa: E402
from testenv.node import POD_PLACEMENT, RealNode, ensure_node_tools  # noqa: E402

TARGET_WARM_S = 20.0
TARGET_DEPLOY_S = 60.0
RESULTS = ROOT / "benchmarks" / "results" / "real_node.json"
NODE_BUILDS = ("kubernetes-node", "containerd", "local-path-provisioner")
HUB_IMAGES = ("k8s-hub", "proxy", "singleuser")
#: The upstream Zero to JupyterHub chart as released (tests/conftest.py serves the same).
SHARED_CHARTS = ROOT.parent / "shared" / "charts"


def _progress(msg: str) -> None:
    print(msg, flush=True)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cold_build() -> dict:
    times = build.build_times()
    parts = {k: v for k, v in times.items() if k in NODE_BUILDS or k.startswith("image-")}
    return {
        "source": f"recorded by the build step in {build.cache_dir() / 'build-times.json'}",
        "total_s": round(sum(v["seconds"] for v in parts.values()), 1),
        "per_part": parts,
    }


def _pod_running_s(node: RealNode, name: str) -> float:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **POD_PLACEMENT,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": images.BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "600"],
                }
            ],
        },
    }
    t0 = time.monotonic()
    status, body = node.request("POST", "/api/v1/namespaces/default/pods", pod)
    if status not in (200, 201):
        raise RuntimeError(f"creating the pod failed: {status} {body}")
    while True:
        _, body = node.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        if body.get("status", {}).get("phase") == "Running":
            return time.monotonic() - t0
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"pod not Running after 120 s: {body.get('status')}")
        time.sleep(0.05)


def warm_runs(runs: int) -> list[dict]:
    tools = build.ensure_tools(progress=_progress)
    node_tools = ensure_node_tools(progress=_progress)
    out = []
    for i in range(runs):
        t0 = time.monotonic()
        cp = ControlPlane(tools)
        cp.start()
        t_cp = time.monotonic() - t0
        assert cp.workdir is not None and cp.server is not None
        node = RealNode(cp.server, cp.workdir / "pki", node_tools)
        try:
            node.start()
            t_up = time.monotonic() - t0
            pod_s = _pod_running_s(node, f"bench-{i}")
        finally:
            t1 = time.monotonic()
            node.stop()
            cp.stop()
            stop_s = time.monotonic() - t1
        run = {
            "control_plane_s": round(t_cp, 2),
            "node_ready_s": round(node.timings["node_ready"], 2),
            "cluster_with_node_up_s": round(t_up, 2),
            "pod_running_s": round(pod_s, 2),
            "stop_s": round(stop_s, 2),
        }
        print(f"warm run {i + 1}: {run}", flush=True)
        out.append(run)
    return out


# --- deploy to healthy -------------------------------------------------------------------


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server as the tests start it (tests/conftest.py), stopped by PID after."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from hubfleet.server import PrefectServer, any_free_port

    server = PrefectServer(home, port=any_free_port())
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    try:
        server.ensure(progress=_progress)
        os.environ.update(server.client_env())
        with temporary_settings(
            {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.credential()}
        ):
            yield server.api_url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_fleet(
    root: Path, node_cluster: str, node_hubs: list[str], local_hubs: list[str], refs: dict[str, str]
) -> None:
    """One fleet: a kubeconfig cluster on the real node (as tests/node/test_deploy_on_node.py
    writes it) and a local cluster, each with one hub per run."""
    import yaml

    from testenv.nodevalues import node_values

    root.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: bench-node\nchart_version: 4.4.0\n")
    d = root / "clusters" / node_cluster
    d.mkdir(parents=True)
    body = (
        f"name: {node_cluster}\nprovider: kubeconfig\nkubeconfig: {{context: hubfleet-testenv}}\n"
        "hub_access: port-forward\nhubs:\n"
    )
    for hub in node_hubs:
        body += (
            f"  - {{name: {hub}, domain: {hub}.{node_cluster}.hubfleet.test, tier: staging, "
            f"kind: standing, values: [{hub}.values.yaml]}}\n"
        )
        (d / f"{hub}.values.yaml").write_text("{}\n")
    (d / "cluster.yaml").write_text(body)
    (d / "cluster.values.yaml").write_text(yaml.safe_dump({"jupyterhub": node_values(refs)}))
    d = root / "clusters" / "local"
    d.mkdir(parents=True)
    body = "name: local\nprovider: local\nlocal: {}\nhubs:\n"
    for hub in local_hubs:
        body += (
            f"  - {{name: {hub}, domain: {hub}.local.hubfleet.test, tier: staging, "
            f"kind: standing, values: [{hub}.values.yaml]}}\n"
        )
        (d / f"{hub}.values.yaml").write_text("{}\n")
    (d / "cluster.yaml").write_text(body)


def _stop_local_hubs(data: Path) -> None:
    """As tests/helm/conftest.py stop_local_hubs: every local hub started, stopped by PID."""
    from tasks.local_hub import LocalHub

    for state in (data / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()


def _outcome(result: HubDeployed) -> dict[str, Any]:
    return {"action": result.action, "health": result.health}


def local_runs(hubs: list[str], data: Path) -> list[dict]:
    from flows.deploy_hub import deploy_hub

    out = []
    for i, hub in enumerate(hubs):
        try:
            t0 = time.monotonic()
            result = asyncio.run(deploy_hub(cluster="local", hub=hub))
            seconds = time.monotonic() - t0
        finally:
            _stop_local_hubs(data)
        run = {"seconds": round(seconds, 2), **_outcome(result), "load_1m": _load()[0]}
        print(f"local deploy {i + 1}: {run}", flush=True)
        if result.health != "healthy":
            raise RuntimeError(f"local deploy of {hub} not healthy: {result}")
        out.append(run)
    return out


def _remove_hub(cp: ControlPlane, helm_binary: Path, kube_api: Any, hub: str) -> None:
    """As the test's fixture: helm uninstall, KubeSpawner's pods, the namespace."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tasks.helm import Helm

    h = Helm(cp.kubeconfig, "hubfleet-testenv", binary=helm_binary)
    try:
        h.uninstall(hub, hub, wait_timeout="2m")
    except Exception as e:  # cleanup: report, go on
        print(f"  uninstall of {hub}: {type(e).__name__}: {e}", flush=True)
    finally:
        h.close()
    core = client.CoreV1Api(kube_api)
    try:
        for pod in core.list_namespaced_pod(hub).items:
            core.delete_namespaced_pod(pod.metadata.name, hub, grace_period_seconds=1)
        core.delete_namespace(hub)
    except ApiException as e:
        print(f"  deleting namespace {hub}: {e.status} {e.reason}", flush=True)


def node_runs(
    cluster: str,
    hubs: list[str],
    image_archives: dict[str, images.ImageArchive],
) -> dict[str, Any]:
    from kubernetes import config

    from blocks.cluster_access import ClusterAccess
    from flows.deploy_hub import deploy_hub

    tools = build.ensure_tools(progress=_progress)
    node_tools = ensure_node_tools(progress=_progress)
    os.environ.setdefault("HUBFLEET_HELM", str(tools["helm"]))
    out: list[dict] = []
    cp = ControlPlane(tools)
    node: RealNode | None = None
    kube_api = None
    try:
        t0 = time.monotonic()
        cp.start()
        assert cp.workdir is not None and cp.server is not None
        node = RealNode(cp.server, cp.workdir / "pki", node_tools)
        node.start()
        up_s = time.monotonic() - t0
        t0 = time.monotonic()
        for archive in image_archives.values():
            node.import_image(archive, timeout=600)
        import_s = time.monotonic() - t0
        print(f"node up in {up_s:.1f}s, hub images imported in {import_s:.1f}s", flush=True)
        kube_api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        ClusterAccess(
            kubeconfig=cp.kubeconfig.read_text(), context="hubfleet-testenv", server=cp.server
        ).save(cluster, overwrite=True)
        for i, hub in enumerate(hubs):
            try:
                t0 = time.monotonic()
                result = asyncio.run(deploy_hub(cluster=cluster, hub=hub, gate="auto"))
                seconds = time.monotonic() - t0
            finally:
                t1 = time.monotonic()
                _remove_hub(cp, tools["helm"], kube_api, hub)
                remove_s = time.monotonic() - t1
            run = {
                "seconds": round(seconds, 2),
                **_outcome(result),
                "uninstall_s": round(remove_s, 2),
                "load_1m": _load()[0],
            }
            print(f"node deploy {i + 1}: {run}", flush=True)
            if result.health != "healthy":
                raise RuntimeError(f"deploy of {hub} on the node not healthy: {result}")
            out.append(run)
    finally:
        if kube_api is not None:
            kube_api.close()
        if node is not None:
            node.stop()
        cp.stop()
    return {
        "runs": out,
        "cluster_with_node_up_s": round(up_s, 2),
        "image_import_s": round(import_s, 2),
    }


def deploy_to_healthy(runs: int) -> dict[str, Any]:
    from testenv.chartrepo import ChartRepository

    cached = {name: hubimages.archive_path(name).exists() for name in HUB_IMAGES}
    t0 = time.monotonic()
    archives = {name: hubimages.build_image(name, progress=_progress) for name in HUB_IMAGES}
    images_s = time.monotonic() - t0
    refs = {name: archive.ref for name, archive in archives.items()}
    tag = uuid.uuid4().hex[:5]
    cluster = f"node{tag}"
    node_hubs = [f"hub{tag}{i}" for i in range(runs)]
    local_hubs = [f"local{tag}{i}" for i in range(runs)]
    saved = {
        k: os.environ.get(k)
        for k in ("HUBFLEET_DATA_DIR", "HUBFLEET_FLEET", "HUBFLEET_CHART_REPOSITORY")
    }
    with tempfile.TemporaryDirectory(prefix="hubfleet-bench-node-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir()
        _write_fleet(tmp / "fleet", cluster, node_hubs, local_hubs, refs)
        os.environ["HUBFLEET_DATA_DIR"] = str(data)
        os.environ["HUBFLEET_FLEET"] = str(tmp / "fleet")
        repo = ChartRepository(SHARED_CHARTS.glob("*.tgz"), tmp / "chart-repo")
        os.environ["HUBFLEET_CHART_REPOSITORY"] = repo.url
        try:
            with prefect_server(data / "prefect"):
                load_before = _load()
                local = local_runs(local_hubs, data)
                node = node_runs(cluster, node_hubs, archives)
                load_after = _load()
        finally:
            _stop_local_hubs(data)
            repo.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    median_node = statistics.median(r["seconds"] for r in node["runs"])
    median_local = statistics.median(r["seconds"] for r in local)
    return {
        "what": (
            "deploy_hub(cluster, hub) from call to return: install of a new hub to healthy "
            "(helm --atomic --wait, ops token, health gate); each run a new hub"
        ),
        "kubernetes_real_node": {
            "gate": "auto (rollout, then reachable/api/auth through a port-forward)",
            "chart": "jupyterhub 4.4.0 (upstream z2jh) through hubfleet's wrapper",
            **node,
            "median_s": round(median_node, 2),
            "target_s": TARGET_DEPLOY_S,
            "meets_target": median_node <= TARGET_DEPLOY_S,
        },
        "local_provider": {
            "gate": "always on (the local provider's own health check)",
            "runs": local,
            "median_s": round(median_local, 2),
        },
        "hub_images": {
            "already_cached": cached,
            "build_or_reuse_s": round(images_s, 2),
            "refs": refs,
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="warm starts (and deploys by default)")
    ap.add_argument("--deploy-runs", type=int, default=None, help="deploys of each kind")
    ap.add_argument("--skip-warm", action="store_true", help="keep the warm figures on file")
    args = ap.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    load_start = _load()
    if args.skip_warm and "warm" in previous:
        warm = previous["warm"]
    else:
        runs = warm_runs(args.runs)
        median_up = statistics.median(r["cluster_with_node_up_s"] for r in runs)
        warm = {
            "runs": runs,
            "median_cluster_with_node_up_s": round(median_up, 2),
            "median_pod_running_s": round(statistics.median(r["pod_running_s"] for r in runs), 2),
            "target_s": TARGET_WARM_S,
            "meets_target": median_up <= TARGET_WARM_S,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    deploy = deploy_to_healthy(args.deploy_runs or args.runs)
    result = {
        "benchmark": "real_node",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Other work on the (shared) machine skews every figure: how busy it was.
            "load_average_at_start": load_start,
            "load_average_at_end": _load(),
        },
        "cold_build": cold_build(),
        "warm": warm,
        "deploy_to_healthy": deploy,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"warm": warm, "deploy_to_healthy": deploy}, indent=2))
    print(f"wrote {RESULTS}")
    ok = warm["meets_target"] and deploy["kubernetes_real_node"]["meets_target"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
