"""Orchestration overhead of deploy_fleet: 200 hubs on 20 clusters.

Mode **stub-helm** (the only mode here): the helm and Kubernetes steps are replaced by a
fixed-latency stub (`--latency` seconds per `helm upgrade`, everything else instant), so
what is measured is hubfleet + Prefect: planning, locks (real global concurrency limits
on a real Prefect server), subflow runs, tasks, artifacts. Each cluster has 1 staging and
9 prod hubs, parallelism 2, so its critical path is: support (1 step) + staging (1) +
5 prod waves of 2 (1 step each) = 7 steps of `--latency` seconds.

The Prefect server runs on PostgreSQL by default (`--server postgres`, the scale-out setup
of hubfleet/pgserver.py): on SQLite, concurrent run-state writes hit "database is
locked", which the server answers with 503 and the client retries after ~2 s, so
`--server sqlite` mostly measures SQLite's write lock.

Writes benchmarks/results/deploy_fleet_<clusters>x<hubs>.json: wall time, the critical
path computed in the same run, their ratio (target <= 1.10), the overhead per hub in ms,
and what one run costs per hub: HTTP calls from the flow process to the server (by
endpoint), task and flow runs recorded, PostgreSQL row writes and commits, peak RSS of the
flow process and of the server (sampled every second), and the machine's load at start and
end (2 shared cores: other work skews the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# SQLite under 40 concurrent subflows: wait for the write lock rather than answer 503.
os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "30")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMED = re.compile(r"(/name/|/concurrency_limits/)(?!increment|decrement|leases)[^/]+")
#: HTTP requests the flow process sent to the Prefect server, by "METHOD /path" (ids elided).
CALLS: Counter[str] = Counter()


def count_calls() -> None:
    """Count every HTTP request the Prefect clients of this process send (benchmark only)."""
    import httpx

    original = httpx.AsyncClient.send

    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        path = _NAMED.sub(r"\1{name}", _UUID.sub("{id}", request.url.path))
        CALLS[f"{request.method} {path}"] += 1
        return await original(self, request, *args, **kwargs)

    httpx.AsyncClient.send = send  # type: ignore[method-assign]


class RssPeaks:
    """Peak resident memory of some processes (and their children), sampled in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.peak_sum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self, name: str, proc: Any) -> int:
        """The process's RSS; the server's with its children (its workers, if any). The
        flow process's children are the servers it started: counted as those, not here."""
        try:
            children = proc.children(recursive=True) if name != "flow_process" else []
            return int(proc.memory_info().rss) + sum(int(c.memory_info().rss) for c in children)
        except Exception:
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            now = {name: self._rss(name, p) for name, p in self.procs.items()}
            for name, rss in now.items():
                self.peak[name] = max(self.peak[name], rss)
            self.peak_sum = max(
                self.peak_sum, sum(v for k, v in now.items() if k in ("flow_process", "server"))
            )

    def _cpu(self, name: str, proc: Any) -> float:
        """CPU seconds (user + system) of the process (and, but for the flow process, of
        its children: the server's workers, PostgreSQL's backends) so far."""
        try:
            procs = [proc] + (proc.children(recursive=True) if name != "flow_process" else [])
            return sum(sum(p.cpu_times()[:2]) for p in procs)
        except Exception:
            return 0.0

    def __enter__(self) -> RssPeaks:
        self.cpu_start = {name: self._cpu(name, p) for name, p in self.procs.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = {
            name: round(self._cpu(name, p) - self.cpu_start[name], 1)
            for name, p in self.procs.items()
        }

    def mb(self) -> dict[str, float]:
        out = {f"{name}_mb": round(v / 2**20, 1) for name, v in self.peak.items()}
        out["flow_process_plus_server_mb"] = round(self.peak_sum / 2**20, 1)
        return out


async def pg_writes(socket_dir: str | None) -> dict[str, int]:
    """Rows inserted/updated/deleted and transactions committed in the server's database
    so far (pg_stat_database; PostgreSQL only)."""
    if socket_dir is None:
        return {}
    import asyncpg

    conn = await asyncpg.connect(host=socket_dir, user="prefect", database="prefect")
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT tup_inserted, tup_updated, tup_deleted, xact_commit FROM pg_stat_database"
            " WHERE datname = 'prefect'"
        )
        tables = await conn.fetch("SELECT relname, n_tup_ins FROM pg_stat_user_tables")
    finally:
        await conn.close()
    out = dict(row) if row else {}
    out.update({f"inserted:{t['relname']}": int(t["n_tup_ins"]) for t in tables})
    return out


async def completed_hub_runs() -> int:
    """deploy_hub runs that completed (how far a cut-off run got)."""
    from prefect.client.orchestration import get_client

    body = {"flows": {"name": {"any_": ["deploy_hub"]}}}
    body["flow_runs"] = {"state": {"type": {"any_": ["COMPLETED"]}}}  # type: ignore[dict-item]
    async with get_client() as client:
        return int((await client._client.post("/flow_runs/count", json=body)).json())


async def count_runs() -> dict[str, int]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flows = (await client._client.post("/flow_runs/count", json={})).json()
        tasks = (await client._client.post("/task_runs/count", json={})).json()
    return {"flow_runs": int(flows), "task_runs": int(tasks)}


def write_fleet(root: Path, clusters: int, hubs: int, parallelism: int) -> None:
    (root / "clusters").mkdir(parents=True)
    (root / "fleet.yaml").write_text(
        f"name: bench\nparallelism: {parallelism}\nvalues: [common.values.yaml]\n"
    )
    # A prod hub needs a login (hubfleet.auth): nobody logs in to these (null).
    (root / "common.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
    )
    for c in range(clusters):
        lines = [f"name: c{c}", "provider: kubeconfig", "kubeconfig: {context: bench}", "hubs:"]
        for h in range(hubs):
            tier = "staging" if h == 0 else "prod"
            lines.append(
                f"  - {{name: h{c}x{h}, domain: h{h}.c{c}.bench.test, tier: {tier}, "
                "kind: standing}"
            )
        (root / "clusters" / f"c{c}").mkdir()
        (root / "clusters" / f"c{c}" / "cluster.yaml").write_text("\n".join(lines) + "\n")


def install_stub(latency: float) -> None:
    """Replace helm and the Kubernetes API with a fixed-latency stub (benchmark only)."""
    from tasks import helm as helm_mod
    from tasks import kube as kube_mod

    revisions: dict[str, int] = {}

    def upgrade(self: Any, release: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(latency)
        revisions[release] = revisions.get(release, 0) + 1
        return {"version": revisions[release], "chart": {"metadata": {"version": "0.1.0"}}}

    helm_mod.Helm.upgrade = upgrade  # type: ignore[method-assign]
    helm_mod.Helm.history = lambda self, *a, **k: []  # type: ignore[method-assign]
    helm_mod.Helm.list_releases = lambda self: []  # type: ignore[method-assign]
    helm_mod.Helm.status = lambda self, *a, **k: None  # type: ignore[method-assign]

    @contextmanager
    def no_client(*args: Any, **kwargs: Any) -> Iterator[None]:
        yield None

    kube_mod.kube_client = no_client  # type: ignore[assignment]
    kube_mod._ensure_namespace = lambda *a, **k: False  # type: ignore[assignment]
    kube_mod._ensure_ops_secret = lambda *a, **k: False  # type: ignore[assignment]
    kube_mod._hub_namespaces = lambda *a, **k: []  # type: ignore[assignment]
    kube_mod.rollout_problems = lambda *a, **k: []  # type: ignore[assignment]


async def run(
    clusters: int,
    hubs: int,
    parallelism: int,
    latency: float,
    pids: dict[str, int],
    socket_dir: str | None,
    deadline: float,
) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    from blocks.cluster_access import ClusterAccess
    from flows.deploy_fleet import deploy_fleet
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir
    from hubfleet.plan import plan_fleet
    from hubfleet.results import Outcome
    from tasks.locks import ensure_concurrency_limits, limits_wanted

    fleet = load_fleet(fleet_dir())
    # Setup (not timed), 32 requests at a time: 500 access blocks and 5,520 limits one by
    # one took longer than the run itself on a loaded machine.
    gate = asyncio.Semaphore(32)

    async def bounded(coro: Any) -> None:
        async with gate:
            await coro

    def access() -> ClusterAccess:
        return ClusterAccess(kubeconfig="stub", context="bench", server="https://stub")

    await access().save(fleet.clusters[0].name, overwrite=True)  # registers the block type
    await asyncio.gather(
        *(bounded(access().save(c.name, overwrite=True)) for c in fleet.clusters[1:])
    )
    async with get_client() as client:
        await asyncio.gather(
            *(
                bounded(client.upsert_global_concurrency_limit_by_name(name, slots))
                for name, slots in limits_wanted(fleet).items()
            )
        )
    await ensure_concurrency_limits(fleet)  # all exist now: reads them by page only
    steps = plan_fleet(fleet, ["*"], {}).critical_path_steps()
    load_start = os.getloadavg()
    runs_before = await count_runs()
    writes_before = await pg_writes(socket_dir)
    CALLS.clear()
    finished = True
    with RssPeaks(pids) as rss:
        start = time.perf_counter()
        try:
            state = await asyncio.wait_for(
                deploy_fleet(selection=["*"], gate="rollout", operator="bench", return_state=True),
                deadline,
            )
            result = await state.aresult(raise_on_failure=False)
            outcomes = [o.outcome for o in result.outcomes]
        except TimeoutError:
            # Bounded: the run is cut off; what it did so far is measured below.
            finished, outcomes = False, []
        wall = time.perf_counter() - start
    calls = dict(CALLS.most_common())
    # Runs and writes land on the server a little after the flow ends (events).
    await asyncio.sleep(5)
    writes_after = await pg_writes(socket_dir)
    runs_after = await count_runs()
    done = await completed_hub_runs()
    critical = steps * latency
    total_hubs = clusters * hubs
    # Per hub: over the hubs whose deploy completed when the run was cut off.
    per = total_hubs if finished else max(done, 1)
    return {
        "finished": finished,
        "deadline_s": deadline,
        "hub_runs_completed": done,
        "cpu_s": rss.cpu_s,
        "cpu_ms_per_hub": {k: round(v * 1000 / per, 1) for k, v in rss.cpu_s.items()},
        "mode": "stub-helm (fixed latency per helm upgrade; kube API stubbed)",
        "clusters": clusters,
        "hubs": total_hubs,
        "parallelism_per_cluster": parallelism,
        "helm_latency_s": latency,
        "critical_path_steps": steps,
        "critical_path_s": critical,
        "wall_s": round(wall, 2),
        "ratio": round(wall / critical, 3),
        "target_ratio": 1.10,
        "overhead_s": round(wall - critical, 2),
        # Overhead amortised over every hub, and added per step of the critical path.
        "overhead_per_hub_ms": round((wall - critical) * 1000 / total_hubs, 1),
        "overhead_per_step_s": round((wall - critical) / steps, 2),
        "deployed": outcomes.count(Outcome.deployed),
        # Other work on the machine skews the ratio: record how busy it was.
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "not_deployed": [o for o in outcomes if o != "deployed"][:5],
        "rss_peak": rss.mb(),
        "per_hub": {
            "server_calls": round(sum(calls.values()) / per, 2),
            **{
                k: round((runs_after[k] - runs_before[k]) / per, 2)
                for k in ("flow_runs", "task_runs")
            },
            **{
                f"pg_{k}": round((writes_after[k] - writes_before[k]) / per, 1)
                for k in writes_after
                if ":" not in k
            },
            "seconds_overhead": round((wall - critical) / total_hubs, 4),
        },
        "server_calls_total": sum(calls.values()),
        # Which tables the writes went to (rows inserted per hub, the largest first).
        "pg_rows_inserted_per_hub_by_table": dict(
            sorted(
                (
                    (k.removeprefix("inserted:"), round((v - writes_before.get(k, 0)) / per, 1))
                    for k, v in writes_after.items()
                    if k.startswith("inserted:") and v - writes_before.get(k, 0) > 0
                ),
                key=lambda kv: -kv[1],
            )
        ),
        "server_calls_by_endpoint": calls,
    }


@contextmanager
def prefect_server(kind: str, tmp: Path) -> Iterator[tuple[int | None, int | None, str | None]]:
    """A throwaway Prefect server on PostgreSQL or SQLite, stopped (by PID) afterwards;
    yields the server's and PostgreSQL's PIDs and PostgreSQL's socket directory."""
    if kind == "sqlite":
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield None, None, None
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from hubfleet.server import ServerError, any_free_port, postgres_stack

    pg, server = postgres_stack(tmp / "server", any_free_port())
    try:
        pg.ensure()
        for attempt in range(3):  # a free port can be taken meanwhile on a shared machine
            try:
                server.ensure()
                break
            except ServerError as exc:
                if attempt == 2:
                    raise
                print(f"server did not start ({exc}); retrying on another port", file=sys.stderr)
                server.stop()
                server.port = any_free_port()
        auth = {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.credential()}
        with temporary_settings(auth):
            yield server.pid(), pg.pid(), str(pg.socket_dir)
    finally:
        server.stop()
        pg.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--hubs", type=int, default=10, help="hubs per cluster (1 staging)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per helm upgrade")
    parser.add_argument("--server", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--out", help="result file (default deploy_fleet_<C>x<H>.json)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=3600,
        help="seconds the fleet run may take; then it is cut off and what it did so far is "
        "recorded (finished: false)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubfleet-bench-") as tmp:
        root = Path(tmp) / "fleet"
        write_fleet(root, args.clusters, args.hubs, args.parallelism)
        os.environ["HUBFLEET_FLEET"] = str(root)
        install_stub(args.latency)
        count_calls()
        with prefect_server(args.server, Path(tmp)) as (server_pid, pg_pid, socket_dir):
            pids = {"flow_process": os.getpid()}
            if server_pid:
                pids["server"] = server_pid
            if pg_pid:  # PostgreSQL's postmaster; its backends are its children (shared
                pids["postgres"] = pg_pid  # memory counted in each: an upper bound)
            result = asyncio.run(
                run(
                    args.clusters,
                    args.hubs,
                    args.parallelism,
                    args.latency,
                    pids,
                    socket_dir,
                    args.deadline,
                )
            )
        result["prefect_server"] = args.server
    name = args.out or f"deploy_fleet_{args.clusters}x{args.hubs}.json"
    out = REPO / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
