"""Benchmark the health sweeps.

shallow: N hubs (default 1,000; issue #19 asks for 10,000) answered by a loopback
  simulator (a separate process listening on N ports, one per hub, answering /hub/health,
  /hub/api, /hub/api/user and the usage sample's /hub/api/users?state=active (no servers)
  like a hub with latencies of 2-50 ms; 2% of hubs always 503, 3% fail 30% of health
  requests, 1% refuse the token). `check_fleet_health(depth="shallow")` against a real
  Prefect server (SQLite; every hub's result persisted in the sweep's table artifact)
  versus a bare asyncio probe of the same endpoints with the same probe code, concurrency
  and retries (and the same usage sample of each hub it reached), no Prefect, measured in
  the same run.
  Targets (10,000 hubs): median sweep <= 20 s, and <= 2x the bare probe.
  Also: peak RSS of this process (it runs the flow) and of the Prefect server during the
  sweeps, the CPU seconds of flow, server and simulator in the last sweep, the load
  average at the start and the end (the machine has 2 cores shared with others), and with
  --profile py-spy flame graphs of the flow process and the server.
  Setup: the hubs' ops-token blocks are written straight into the server's database in
  one transaction with Prefect's own ORM models and encryption (through the API, one
  block a call, 10,000 blocks took 20 minutes); the sweep reads them through the API.
deep: N real local JupyterHubs, per-cluster limit c: a deep sweep versus one hub's deep
  check (spawn included). Target: wall <= 1.2 x ceil(N/c) x single.

Usage: .venv/bin/python benchmarks/bench_health_sweep.py [--hubs 1000] [--runs 3]
       [--deep-hubs 4] [--per-cluster-deep 2] [--profile]
  e.g. --hubs 10000 --runs 3 --deep-hubs 0 (the shallow sweep at issue #19's scale)
Writes benchmarks/results/health_sweep.json (profiles: benchmarks/results/profiles/).
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
TARGET_S, TARGET_RATIO = 20, 2  # issue #19, at 10,000 hubs


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

    # The first save registers the block type and schema through the API. The other
    # blocks are written straight into the server's database in one transaction with
    # Prefect's own server models (its ORM encrypts each block's data as the API would):
    # through the API, one block a call, 10,000 blocks took 20 minutes on the shared
    # 2-core machine, and concurrent writes make the SQLite server answer 503. The sweep
    # reads them through the API like any other block.
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.utilities.encryption import _get_fernet_encryption

    await block(0).asave(HubOpsToken.block_name("sim", "h0000"), overwrite=True)
    db = provide_database_interface()
    async with db.session_context() as session:
        fernet = await _get_fernet_encryption(session)
    # One block's document as Prefect serialises it; the others differ in hub, url and
    # token only (serialising each Block builds its JSON schema: 0.2 s a block).
    template = block(1)._to_block_document(
        name="template",
        block_schema_id=HubOpsToken._block_schema_id,
        block_type_id=HubOpsToken._block_type_id,
        include_secrets=True,
    )
    shape = template.model_dump(mode="json", context={"include_secrets": True})["data"]
    assert shape["token"] == behaviour(1)["token"], "the template's token was masked"
    rows = []
    for i in range(1, n):
        name = HubOpsToken.block_name("sim", f"h{i:04d}")
        plain = {
            **shape,
            "hub": f"sim/h{i:04d}",
            "url": f"http://127.0.0.1:{ports[i]}",
            "token": behaviour(i)["token"],
        }
        rows.append(
            {
                "name": name,
                "block_schema_id": HubOpsToken._block_schema_id,
                "block_type_id": HubOpsToken._block_type_id,
                "block_type_name": HubOpsToken.get_block_type_name(),
                "is_anonymous": False,
                "data": fernet.encrypt(json.dumps(plain).encode()).decode(),
            }
        )
    for attempt in range(30):  # the server's own services may hold SQLite's write lock
        try:
            async with db.session_context(begin_transaction=True) as session:
                for first in range(0, len(rows), 1000):
                    await session.execute(sa.insert(db.BlockDocument), rows[first : first + 1000])
            break
        except sa.exc.OperationalError as error:
            if "locked" not in str(error) or attempt == 29:
                raise
            await asyncio.sleep(1)
    progress(f"  {n}/{n} token blocks")
    return tokens


class Peaks:
    """Peak RSS (MB) of this process (it runs the flow) and of the Prefect server, and CPU
    seconds of the server and the simulator, sampled every 0.1 s while a phase runs (a
    thread: the event loop is busy)."""

    def __init__(self, sim_pid: int) -> None:
        import psutil

        me = psutil.Process()
        self.me = me
        self.server = [
            p
            for p in me.children(recursive=True)
            if "uvicorn" in " ".join(p.cmdline()) or "prefect" in " ".join(p.cmdline()[1:3])
        ]
        self.sim = psutil.Process(sim_pid)
        self.flow_mb = self.server_mb = 0.0
        self._stop = False

    def _rss(self, procs: list[Any]) -> float:
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except Exception:  # a process that ended has no RSS
                pass
        return total / 2**20

    def _cpu(self) -> dict[str, float]:
        def cpu(p: Any) -> float:
            t = p.cpu_times()
            return float(t.user + t.system)

        return {
            "flow": cpu(self.me),
            "server": sum(cpu(p) for p in self.server),
            "simulator": cpu(self.sim),
        }

    def __enter__(self) -> Peaks:
        import threading

        self._stop = False
        self.cpu_before = self._cpu()

        def sample() -> None:
            while not self._stop:
                self.flow_mb = max(self.flow_mb, self._rss([self.me]))
                self.server_mb = max(self.server_mb, self._rss(self.server))
                time.sleep(0.1)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()
        after = self._cpu()
        self.cpu_s = {k: round(after[k] - self.cpu_before[k], 1) for k in after}


async def bare_probe(
    urls: dict[str, str], tokens: dict[str, str], limit: int, retries: int, backoff: float
) -> dict[str, int]:
    """The same probes, concurrency and retries as the sweep; no Prefect at all."""
    import httpx

    from hubfleet.health import DEPTHS, Level, judge
    from tasks import probes
    from tasks.usage import running_servers

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
                if found and found[-1].level is Level.auth and found[-1].ok:
                    # the usage sample the sweep takes of every hub it reached
                    try:
                        await running_servers(client, urls[hub], tokens[hub], 5.0)
                    except Exception:  # the sweep logs it and moves on
                        pass
            return judge(hub, found).verdict.value

        verdicts = await asyncio.gather(*(one(h) for h in urls))
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    return counts


async def shallow(
    n: int, runs: int, data: Path, limit: int, profile: bool = False
) -> dict[str, Any]:
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

        # A sweep's bound: 600 s, plus 0.1 s a hub past 1,000 (a loaded 2-core machine).
        bound = 600 + max(0, n - 1000) / 10
        await phase("warm-up sweep", bound, sweep())
        bare, swept, counts, peaks = [], [], {}, []
        for run in range(1, runs + 1):
            t = time.perf_counter()
            bare_counts = await phase(
                f"run {run}/{runs}: bare probe", bound, bare_probe(urls, tokens, limit, 3, 0.5)
            )
            bare.append(time.perf_counter() - t)
            spies = start_profiles(profile, sim.pid) if run == runs else []
            t = time.perf_counter()
            with Peaks(sim.pid) as peak:
                result = await phase(f"run {run}/{runs}: sweep", bound, sweep())
            swept.append(time.perf_counter() - t)
            stop_profiles(spies)
            peaks.append(peak)
            counts = result.counts
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
        "target_sweep_s": TARGET_S,
        "target_ratio": TARGET_RATIO,
        "meets_targets": sweep_med <= TARGET_S and sweep_med <= TARGET_RATIO * bare_med,
        # During the sweeps: this process runs the flow; the server is Prefect's (uvicorn).
        "peak_rss_mb": {
            "flow_process": round(max(p.flow_mb for p in peaks)),
            "prefect_server": round(max(p.server_mb for p in peaks)),
        },
        "cpu_s_last_sweep": peaks[-1].cpu_s,
        "verdicts_last_sweep": counts,
        "verdicts_last_bare": bare_counts,
        "rows_persisted_in_table_artifact": persisted,
        "profiles": [str(p) for p in PROFILES.glob("sweep-*.svg")] if profile else [],
    }


PROFILES = REPO / "benchmarks" / "results" / "profiles"


def start_profiles(profile: bool, sim_pid: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on this process (the flow) and the Prefect server, for the last sweep
    (--profile; `pip install py-spy` into the venv first: it is no project dependency)."""
    if not profile:
        return []
    import psutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    PROFILES.mkdir(parents=True, exist_ok=True)
    server = [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.pid != sim_pid and "uvicorn" in " ".join(p.cmdline())
    ]
    targets = {"flow": os.getpid(), **({"server": server[0]} if server else {})}
    spies = []
    for name, pid in targets.items():
        command = [spy, "record", "--pid", str(pid), "--rate", "50", "--idle",
                   "--nonblocking", "--output", str(PROFILES / f"sweep-{name}.svg")]  # fmt: skip
        spies.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return spies


def stop_profiles(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its flame graph on SIGINT
    for spy in spies:
        spy.wait(60)


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
        "verdicts": result.counts,
    }


async def main_async(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cpus": os.cpu_count(),
        # 2 shared cores: the load at the start and the end says how busy the machine was.
        "load_average_1_5_15_min_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    out["shallow"] = await shallow(args.hubs, args.runs, data, args.per_cluster, args.profile)
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
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of the flow process and the server during the last sweep "
        "(benchmarks/results/profiles/; needs `.venv/bin/pip install py-spy`)",
    )
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
    result["load_average_1_5_15_min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
