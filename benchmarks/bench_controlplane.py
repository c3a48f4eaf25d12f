"""Benchmark: cold build of the test tools and warm start of the local control plane.

* Cold build: if binaries are missing from the cache, build them now and time it;
  otherwise report what the build step recorded in ``<cache>/build-times.json``
  (which may be a rebuild with a warm Go cache). ``--measure-cold`` instead runs the
  build step in a subprocess with an empty HUBFLEET_CACHE_DIR, GOCACHE, GOMODCACHE and
  npm cache (like a fresh CI machine; modules are downloaded from the proxy again),
  then deletes them. That takes several minutes.
* Warm start: N times, from ``ControlPlane.start()`` (binaries cached) until a
  Deployment of 2 replicas created right after start-up reports 2 ready replicas;
  then stop (timed separately). Target: median <= 20 s on a 2-core machine.

Writes ``benchmarks/results/controlplane.json`` and prints the figures.

    python benchmarks/bench_controlplane.py [--runs 5] [--measure-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testenv import build  # noqa: E402
from testenv.controlplane import ControlPlane  # noqa: E402

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


def measure_cold() -> dict:
    """Build everything from nothing in throwaway caches; the fresh-machine CI figure."""
    tmp = Path(tempfile.mkdtemp(prefix="hubfleet-coldbuild-"))
    env = dict(
        os.environ,
        HUBFLEET_CACHE_DIR=str(tmp / "cache"),
        GOCACHE=str(tmp / "gocache"),
        GOMODCACHE=str(tmp / "gomodcache"),
        npm_config_cache=str(tmp / "npm"),
    )
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "testenv.build_all"], env=env, timeout=90 * 60)
        total = round(time.monotonic() - t0, 1)
        if proc.returncode != 0:
            raise SystemExit(f"cold build failed (exit {proc.returncode})")
        per_tool = json.loads((tmp / "cache" / "build-times.json").read_text())
    finally:
        # The module cache is read-only by design; the go command knows how to remove it.
        subprocess.run(["go", "clean", "-modcache"], env=env, timeout=600, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "source": "measured now with empty HUBFLEET_CACHE_DIR, GOCACHE, GOMODCACHE, npm cache",
        "total_s": total,
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
    ap.add_argument("--measure-cold", action="store_true", help="time a build from empty caches")
    args = ap.parse_args()

    load_at_start = round(os.getloadavg()[0], 2)
    cold = measure_cold() if args.measure_cold else cold_build()
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
            # Other work on the machine slows both figures; keep the evidence with them.
            "loadavg_1m_at_start": load_at_start,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
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
