"""Benchmark: the real test node (kubelet, containerd, kube-proxy; hubfleet/testenv/node.py).

* Cold build: what the build step recorded in ``<cache>/build-times.json`` for the node's
  parts (kubelet + kube-proxy, containerd, local-path-provisioner, the images). Those
  figures depend on how busy the machine was; the build records them as they happened.
* Warm start, N times: ``ControlPlane.start()`` then ``RealNode.start()`` until the node
  is Ready and kube-proxy has synced; then a busybox pod from create to Running; then
  the stop of both. Target (issue 14): the cluster with the real node up in <= 20 s warm.

Not measured yet: deploy-to-healthy of a hub on the real node (the hub, proxy and
single-user images are built, hubfleet/testenv/hubimages.py, and their cold builds are in
the record above, but no hub is deployed on the node yet; issue 14).

Writes ``benchmarks/results/real_node.json`` and prints the figures.

    python benchmarks/bench_real_node.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hubfleet.testenv import build, images  # noqa: E402
from hubfleet.testenv.controlplane import ControlPlane  # noqa: E402
from hubfleet.testenv.node import POD_PLACEMENT, RealNode, ensure_node_tools  # noqa: E402

TARGET_WARM_S = 20.0
RESULTS = ROOT / "benchmarks" / "results" / "real_node.json"
NODE_BUILDS = ("kubernetes-node", "containerd", "local-path-provisioner")


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
    tools = build.ensure_tools(progress=lambda m: print(m, flush=True))
    node_tools = ensure_node_tools(progress=lambda m: print(m, flush=True))
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
        print(f"run {i + 1}: {run}", flush=True)
        out.append(run)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = warm_runs(args.runs)
    median_up = statistics.median(r["cluster_with_node_up_s"] for r in runs)
    result = {
        "benchmark": "real_node",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cold_build": cold_build(),
        "warm": {
            "runs": runs,
            "median_cluster_with_node_up_s": round(median_up, 2),
            "median_pod_running_s": round(statistics.median(r["pod_running_s"] for r in runs), 2),
            "target_s": TARGET_WARM_S,
            "meets_target": median_up <= TARGET_WARM_S,
        },
        "not_measured": (
            "deploy-to-healthy of a hub on the real node (images built, hub not deployed there yet)"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["warm"], indent=2))
    print(f"wrote {RESULTS}")
    return 0 if result["warm"]["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
