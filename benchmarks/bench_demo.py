"""Benchmark `hubfleet demo`: wall time cold and warm, peak memory of orchestration.

cold: a fresh data dir (new Prefect database, server start, three hubs started and their
      ops tokens bootstrapped). warm: the same command again (server and hubs reused).
Orchestration memory: the `hubfleet` CLI process plus the Prefect server process tree,
sampled every 100 ms (the JupyterHub and proxy processes are the workload, not counted).

Usage: .venv/bin/python benchmarks/bench_demo.py [--runs N]
Writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
HUBFLEET = str(REPO / ".venv" / "bin" / "hubfleet")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_pid(data: Path) -> int | None:
    state = data / "prefect" / "server.json"
    return json.loads(state.read_text())["pid"] if state.is_file() else None


#: Not counted in the CLI's tree: the workload, and the Prefect server (counted on its own;
#: it is the CLI's child until the CLI exits).
SKIP = ("jupyterhub", "configurable-http", "prefect server")


def rss_tree(pid: int, skip: tuple[str, ...] = SKIP) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            # A skipped process's own children (e.g. the server's workers) go with it.
            if proc is not root and any(
                s in " ".join(p.cmdline()) for p in (proc, *proc.parents()) for s in skip
            ):
                continue
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_demo(data: Path, port: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["HUBFLEET_DATA_DIR"] = str(data)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [HUBFLEET, "demo", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak_cli = peak_server = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_cli, peak_server
        while not done.is_set():
            peak_cli = max(peak_cli, rss_tree(proc.pid))
            spid = server_pid(data)
            if spid:
                peak_server = max(peak_server, rss_tree(spid, skip=()))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate(timeout=600)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"hubfleet demo failed ({proc.returncode}):\n{output}")
    return {
        "wall_s": round(wall, 2),
        "peak_cli_mib": round(peak_cli / 2**20, 1),
        "peak_server_mib": round(peak_server / 2**20, 1),
        "peak_orchestration_mib": round((peak_cli + peak_server) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold and warm runs each")
    args = parser.parse_args()
    cold, warm = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="hubfleet-bench-") as tmp:
            data, port = Path(tmp), free_port()
            env = {**os.environ, "HUBFLEET_DATA_DIR": str(data)}
            try:
                cold.append(run_demo(data, port))
                warm.append(run_demo(data, port))
            finally:
                subprocess.run(
                    [HUBFLEET, "demo", "--down"], env=env, capture_output=True, timeout=120
                )
        print(f"run {i + 1}: cold {cold[-1]}  warm {warm[-1]}", flush=True)

    def summary(runs: list[dict[str, float]]) -> dict[str, object]:
        walls = [r["wall_s"] for r in runs]
        return {
            "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls),
            "wall_s_max": max(walls),
            "peak_orchestration_mib_max": max(r["peak_orchestration_mib"] for r in runs),
            "runs": runs,
        }

    result = {
        "benchmark": "hubfleet demo",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "cold": summary(cold),
        "warm": summary(warm),
    }
    out = REPO / "benchmarks" / "results" / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2)[:2000])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
