"""Benchmark the health sweeps.

shallow: 1,000 hubs answered by a loopback simulator (a separate process listening on
  1,000 ports, one per hub, answering /hub/health, /hub/api, /hub/api/user and the usage
  sample's /hub/api/users?state=active (no servers) like a hub
  with latencies of 2-50 ms; 2% of hubs always 503, 3% fail 30% of health requests, 1%
  refuse the token). `check_fleet_health(depth="shallow")` against a real Prefect server
  (every hub's result persisted in the sweep's table artifact) versus a bare asyncio probe
  of the same endpoints with the same probe code, concurrency and retries, no Prefect.
  Targets: median sweep <= 15 s, and <= 3x the bare probe.
deep: N real local JupyterHubs, per-cluster limit c: a deep sweep versus one hub's deep
  check (spawn included). Target: wall <= 1.2 x ceil(N/c) x single.

Usage: .venv/bin/python benchmarks/bench_health_sweep.py [--hubs 1000] [--runs 3]
       [--deep-hubs 4] [--per-cluster-deep 2]
Writes benchmarks/results/health_sweep.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "health_sweep.json"
STARTED = time.perf_counter()


def progress(message: str) -> None:
    """One line per phase on stderr, with the time since the start: a long run shows
    where it is, and a stall shows which phase stalled."""
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


async def phase(what: str, seconds: float, awaitable: Any) -> Any:
    """Run one phase with a deadline: a phase that cannot finish fails, naming itself,
    instead of leaving the benchmark (and its servers) running silently."""
    progress(f"{what} ...")
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise SystemExit(f"bench_health_sweep: {what} did not finish in {seconds:.0f} s") from None


# --- the simulator (runs in its own process: `--serve N`) ------------------------------


def behaviour(i: int) -> dict[str, Any]:
    return {
        "latency": (2 + (i * 7) % 48) / 1000,
        "down": i % 50 == 7,
        "flaky": i % 33 == 5,
        "refuses": i % 100 == 13,
        "token": f"sim-token-{i}",
    }


async def serve(n: int) -> None:
    """Listen on n loopback ports; print the ports as one JSON line; serve until killed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n * 4 + 1024)), hard))

    def handler(i: int) -> Any:
        b = behaviour(i)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    path = lines[0].split(" ")[1]
                    headers = {
                        k.lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines[1:] if line)
                    }
                    await asyncio.sleep(b["latency"])
                    status, body = 200, b""
                    if b["down"] or (
                        b["flaky"] and path == "/hub/health" and random.random() < 0.3
                    ):
                        status = 503
                    elif path == "/hub/api":
                        body = b'{"version": "6.1.1"}'
                    elif path == "/hub/api/user":
                        if b["refuses"] or headers.get("authorization") != f"token {b['token']}":
                            status = 403
                        else:
                            body = json.dumps({"name": "hubfleet-ops"}).encode()
                    elif path.startswith("/hub/api/users?"):  # the usage sample: idle hub
                        if b["refuses"] or headers.get("authorization") != f"token {b['token']}":
                            status = 403
                        else:
                            body = b"[]"
                    reason = {200: "OK", 403: "Forbidden", 503: "Service Unavailable"}[status]
                    writer.write(
                        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler(i), "127.0.0.1", 0) for i in range(n)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# --- the benchmark ----------------------------------------------------------------------


def write_fleet(root: Path, n: int, deep: int) -> None:
    deep = max(deep, 1)  # a cluster needs a hub; unused when --deep-hubs 0
    shutil.copytree(REPO / "fleet", root)
    sim = root / "clusters" / "sim"
    sim.mkdir()
    hubs = "".join(
        f"  - {{name: h{i:04d}, domain: h{i:04d}.sim.hubfleet.test, tier: prod, kind: standing}}\n"
        for i in range(n)
    )
    (sim / "cluster.yaml").write_text(f"name: sim\nprovider: local\nlocal: {{}}\nhubs:\n{hubs}")
    dc = root / "clusters" / "deep"
    dc.mkdir()
    hubs = "".join(
        f"  - {{name: d{i}, domain: d{i}.deep.hubfleet.test, tier: prod, kind: standing}}\n"
        for i in range(deep)
    )
    (dc / "cluster.yaml").write_text(f"name: deep\nprovider: local\nlocal: {{}}\nhubs:\n{hubs}")


async def store_tokens(n: int, ports: list[int], data: Path) -> dict[str, str]:
    """Per simulated hub: state.json pointing at its port, and its token in a block."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate
    from pydantic import SecretStr

    from blocks.hub_token import HubOpsToken

    tokens = {}
    for i, port in enumerate(ports):
        d = data / "hubs" / "sim" / f"h{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "state.json").write_text(
            json.dumps(
                {"ports": {"public": port, "proxy_api": 1, "hub": 1}, "hub": None, "proxy": None}
            )
        )
        tokens[f"sim/h{i:04d}"] = behaviour(i)["token"]

    def block(i: int) -> HubOpsToken:
        return HubOpsToken(
            hub=f"sim/h{i:04d}",
            url=f"http://127.0.0.1:{ports[i]}",
            token_id="sim",
            token=SecretStr(behaviour(i)["token"]),
            created_at=datetime.now(UTC),
        )

    # The first save registers the block type and schema; the rest is one API call each
    # (Block.asave re-checks the type and schema every time: minutes for 1,000 blocks).
    await block(0).asave(HubOpsToken.block_name("sim", "h0000"), overwrite=True)
    fields = {"name", "block_schema_id", "block_type_id", "data", "is_anonymous"}
    async with get_client() as client:

        async def create(i: int) -> None:
            doc = block(i)._to_block_document(
                name=HubOpsToken.block_name("sim", f"h{i:04d}"),
                block_schema_id=HubOpsToken._block_schema_id,
                block_type_id=HubOpsToken._block_type_id,
                include_secrets=True,
            )
            await client.create_block_document(
                BlockDocumentCreate(**doc.model_dump(include=fields))
            )

        for i in range(1, n):
            await create(i)
            if i % 200 == 0:
                progress(f"  {i}/{n} token blocks")
    return tokens


async def bare_probe(
    urls: dict[str, str], tokens: dict[str, str], limit: int, retries: int, backoff: float
) -> dict[str, int]:
    """The same probes, concurrency and retries as the sweep; no Prefect at all."""
    import httpx

    from hubfleet.health import DEPTHS, judge
    from tasks import probes

    gate = asyncio.Semaphore(limit)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(hub: str) -> str:
            async with gate:
                found = await probes.probe_shallow(
                    client,
                    urls[hub],
                    tokens.get(hub),
                    DEPTHS["shallow"],
                    retries=retries,
                    backoff=backoff,
                )
            return judge(hub, found).verdict.value

        verdicts = await asyncio.gather(*(one(h) for h in urls))
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    return counts


async def shallow(n: int, runs: int, data: Path, limit: int) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.check_fleet_health import check_fleet_health

    sim = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sim.stdout is not None
        ports = json.loads(sim.stdout.readline())
        progress(f"simulator listening on {len(ports)} ports")
        t = time.perf_counter()
        # Blocks are written one at a time: 25 concurrent writes made the SQLite server
        # answer 503 ("database is locked") and the client back off for minutes.
        tokens = await phase(f"storing {n} token blocks", 30 + n, store_tokens(n, ports, data))
        setup_s = time.perf_counter() - t
        urls = {f"sim/h{i:04d}": f"http://127.0.0.1:{p}" for i, p in enumerate(ports)}

        def sweep() -> Any:
            return check_fleet_health(depth="shallow", selection=["sim"], per_cluster=limit)

        await phase("warm-up sweep", 600, sweep())
        bare, swept, counts = [], [], {}
        for run in range(1, runs + 1):
            t = time.perf_counter()
            bare_counts = await phase(
                f"run {run}/{runs}: bare probe", 600, bare_probe(urls, tokens, limit, 3, 0.5)
            )
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = await phase(f"run {run}/{runs}: sweep", 600, sweep())
            swept.append(time.perf_counter() - t)
            counts = result["counts"]
            progress(f"run {run}/{runs}: sweep {swept[-1]:.1f} s, bare {bare[-1]:.1f} s")
        async with get_client() as client:
            table = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["health-sweep-shallow"])
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        persisted = len(json.loads(table[0].data)) if table else 0
    finally:
        sim.terminate()
        sim.wait(10)
    sweep_med, bare_med = statistics.median(swept), statistics.median(bare)
    return {
        "hubs": n,
        "per_cluster": limit,
        "runs": runs,
        "token_blocks_setup_s": round(setup_s, 1),
        "sweep_s": [round(x, 2) for x in swept],
        "bare_s": [round(x, 2) for x in bare],
        "sweep_median_s": round(sweep_med, 2),
        "bare_median_s": round(bare_med, 2),
        "ratio": round(sweep_med / bare_med, 2),
        "target_sweep_s": 15,
        "target_ratio": 3,
        "meets_targets": sweep_med <= 15 and sweep_med <= 3 * bare_med,
        "verdicts_last_sweep": counts,
        "verdicts_last_bare": bare_counts,
        "rows_persisted_in_table_artifact": persisted,
    }


async def deep(n: int, c: int) -> dict[str, Any]:
    from flows.check_fleet_health import check_fleet_health
    from flows.check_hub_health import check_hub_health
    from flows.deploy_hub import deploy_hub
    from hubfleet.health import Verdict
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir
    from tasks.local_hub import local_hub

    hubs = [f"d{i}" for i in range(n)]
    try:
        for hub in hubs:
            await phase(f"deploying local hub {hub}", 300, deploy_hub(cluster="deep", hub=hub))
        singles = []
        for hub in hubs[:2]:
            t = time.perf_counter()
            report = await phase(
                f"deep check of {hub}", 300, check_hub_health("deep", hub, depth="deep")
            )
            singles.append(time.perf_counter() - t)
            assert report.verdict is Verdict.healthy, report
        single = statistics.median(singles)
        t = time.perf_counter()
        result = await phase(
            f"deep sweep of {n} hubs",
            600,
            check_fleet_health(depth="deep", selection=["deep"], per_cluster=c),
        )
        wall = time.perf_counter() - t
    finally:
        fleet = load_fleet(fleet_dir())
        for hub in hubs:
            local_hub(fleet, "deep", hub).stop()
    bound = 1.2 * math.ceil(n / c) * single
    return {
        "hubs": n,
        "per_cluster": c,
        "single_deep_check_s": [round(x, 2) for x in singles],
        "sweep_s": round(wall, 2),
        "bound_s": round(bound, 2),
        "ratio_to_ideal": round(wall / (math.ceil(n / c) * single), 2),
        "meets_target": wall <= bound,
        "verdicts": result["counts"],
    }


async def main_async(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    out["shallow"] = await shallow(args.hubs, args.runs, data, args.per_cluster)
    print(json.dumps(out["shallow"], indent=2), flush=True)
    if args.deep_hubs:
        out["deep"] = await deep(args.deep_hubs, args.per_cluster_deep)
        print(json.dumps(out["deep"], indent=2), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hubs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-cluster", type=int, default=50)
    parser.add_argument("--deep-hubs", type=int, default=4)
    parser.add_argument("--per-cluster-deep", type=int, default=2)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return

    # SIGTERM unwinds like Ctrl-C, so the simulator and the Prefect server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="hubfleet-bench-health-"))
    data = tmp / "data"
    os.environ["HUBFLEET_DATA_DIR"] = str(data)
    os.environ["HUBFLEET_FLEET"] = str(tmp / "fleet")
    write_fleet(tmp / "fleet", args.hubs, args.deep_hubs)
    from prefect.testing.utilities import prefect_test_harness

    progress(f"fleet of {args.hubs} simulated hubs written; starting a Prefect server (SQLite)")
    try:
        with prefect_test_harness(server_startup_timeout=120):
            result = asyncio.run(main_async(args, data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # The machine's load over the run's last minutes: figures from a busy machine say so.
    result["load_average_1_5_15_min"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
