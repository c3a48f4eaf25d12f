"""Benchmark: cold build of the test tools and warm start of the local control plane.

* Cold build: if binaries are missing from the cache, build them now and time it;
  otherwise report what the build step recorded in ``<cache>/build-times.json``.
* Warm start: N times, from ``ControlPlane.start()`` (binaries cached) until a
  Deployment of 2 replicas created right after start-up reports 2 ready replicas;
  then stop (timed separately). Target: median <= 20 s on a 2-core machine.

Writes ``benchmarks/results/controlplane.json`` and prints the figures.

    python benchmarks/bench_controlplane.py [--runs 5]
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

from hubfleet.testenv import build  # noqa: E402
from hubfleet.testenv.controlplane import ControlPlane  # noqa: E402

TARGET_MEDIAN_S = 20.0
RESULTS = ROOT / "benchmarks" / "results" / "controlplane.json"


def _tools_cached(versions: dict) -> bool:
    b = build.bin_dir()
    k = versions["kubernetes"]["version"]
    names = [
        f"kube-apiserver-{k}",
        f"kube-controller-manager-{k}",
        f"kube-scheduler-{k}",
        f"kwok-{versions['kwok']['version']}",
        f"helm-{versions['helm']['version']}",
    ]
    return all((b / n).exists() for n in names)


def cold_build() -> dict:
    versions = build.load_versions()
    if not _tools_cached(versions):
        t0 = time.monotonic()
        build.ensure_tools(progress=lambda m: print(m, flush=True))
        measured = round(time.monotonic() - t0, 1)
        return {
            "source": "measured now (cache was empty)",
            "total_s": measured,
            "per_tool": build.build_times(),
        }
    per_tool = build.build_times()
    return {
        "source": f"recorded by the build step in {build.cache_dir() / 'build-times.json'}",
        "total_s": round(sum(v["seconds"] for v in per_tool.values()), 1),
        "per_tool": per_tool,
    }


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "bench"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "bench"}},
        "template": {
            "metadata": {"labels": {"app": "bench"}},
            "spec": {
                "nodeSelector": {"hub.jupyter.org/node-purpose": "core"},
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
            },
        },
    },
}


def warm_start_once(tools: dict) -> dict:
    t0 = time.monotonic()
    cp = ControlPlane(tools)
    try:
        cp.start()
        t_up = time.monotonic() - t0
        status, body = cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
        assert status == 201, (status, body)
        status, body = cp.request("POST", "/apis/apps/v1/namespaces/bench/deployments", DEPLOYMENT)
        assert status == 201, (status, body)
        deadline = time.monotonic() + 120
        while True:
            _, d = cp.request("GET", "/apis/apps/v1/namespaces/bench/deployments/bench")
            if d.get("status", {}).get("readyReplicas") == 2:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Deployment not Ready after 120 s: {d.get('status')}")
            time.sleep(0.05)
        t_ready = time.monotonic() - t0
    finally:
        t1 = time.monotonic()
        cp.stop()
        t_stop = time.monotonic() - t1
    return {
        "control_plane_up_s": round(t_up, 2),
        "deployment_ready_s": round(t_ready, 2),
        "stop_s": round(t_stop, 2),
        "phases": {k: round(v, 2) for k, v in cp.timings.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    cold = cold_build()
    tools = build.ensure_tools(progress=lambda m: print(m, flush=True))
    runs = []
    for i in range(args.runs):
        r = warm_start_once(tools)
        runs.append(r)
        print(
            f"run {i + 1}/{args.runs}: control plane up {r['control_plane_up_s']:.2f} s, "
            f"Deployment Ready {r['deployment_ready_s']:.2f} s, stop {r['stop_s']:.2f} s",
            flush=True,
        )
    ready = [r["deployment_ready_s"] for r in runs]
    up = [r["control_plane_up_s"] for r in runs]
    result = {
        "benchmark": "controlplane",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": build.load_versions(),
        "cold_build": cold,
        "warm_start": {
            "runs": runs,
            "deployment_ready_s": {
                "median": round(statistics.median(ready), 2),
                "min": min(ready),
                "max": max(ready),
            },
            "control_plane_up_s": {
                "median": round(statistics.median(up), 2),
                "min": min(up),
                "max": max(up),
            },
        },
        "target": {
            "deployment_ready_median_s": TARGET_MEDIAN_S,
            "met": statistics.median(ready) <= TARGET_MEDIAN_S,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\ncold build ({cold['source']}): total {cold['total_s']:.1f} s")
    for tool, rec in sorted(cold["per_tool"].items()):
        print(f"  {tool:12} {rec['version']:8} {rec['seconds']:7.1f} s")
    w = result["warm_start"]["deployment_ready_s"]
    print(
        f"warm start to a Ready Deployment over {args.runs} runs: median {w['median']:.2f} s "
        f"(min {w['min']:.2f}, max {w['max']:.2f}); target <= {TARGET_MEDIAN_S:.0f} s: "
        f"{'met' if result['target']['met'] else 'NOT met'}"
    )
    print(f"written to {RESULTS}")
    return 0 if result["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
