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

Writes benchmarks/results/deploy_fleet.json: wall time, critical path, their ratio
(target <= 1.2) and the overhead per hub in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
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


async def run(clusters: int, hubs: int, parallelism: int, latency: float) -> dict[str, Any]:
    from blocks.cluster_access import ClusterAccess
    from flows.deploy_fleet import deploy_fleet
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir
    from hubfleet.plan import plan_fleet
    from hubfleet.results import Outcome
    from tasks.locks import ensure_concurrency_limits

    fleet = load_fleet(fleet_dir())
    for cluster in fleet.clusters:
        await ClusterAccess(kubeconfig="stub", context="bench", server="https://stub").save(
            cluster.name, overwrite=True
        )
    await ensure_concurrency_limits(fleet)
    steps = plan_fleet(fleet, ["*"], {}).critical_path_steps()
    start = time.perf_counter()
    state = await deploy_fleet(selection=["*"], gate="rollout", operator="bench", return_state=True)
    result = await state.aresult(raise_on_failure=False)
    wall = time.perf_counter() - start
    outcomes = [o.outcome for o in result.outcomes]
    critical = steps * latency
    total_hubs = clusters * hubs
    return {
        "mode": "stub-helm (fixed latency per helm upgrade; kube API stubbed)",
        "clusters": clusters,
        "hubs": total_hubs,
        "parallelism_per_cluster": parallelism,
        "helm_latency_s": latency,
        "critical_path_steps": steps,
        "critical_path_s": critical,
        "wall_s": round(wall, 2),
        "ratio": round(wall / critical, 3),
        "target_ratio": 1.2,
        "overhead_s": round(wall - critical, 2),
        # Overhead amortised over every hub, and added per step of the critical path.
        "overhead_per_hub_ms": round((wall - critical) * 1000 / total_hubs, 1),
        "overhead_per_step_s": round((wall - critical) / steps, 2),
        "deployed": outcomes.count(Outcome.deployed),
        # Other work on the machine skews the ratio: record how busy it was.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "not_deployed": [o for o in outcomes if o != "deployed"][:5],
    }


@contextmanager
def prefect_server(kind: str, tmp: Path) -> Iterator[None]:
    """A throwaway Prefect server on PostgreSQL or SQLite, stopped (by PID) afterwards."""
    if kind == "sqlite":
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hubfleet.server import any_free_port, postgres_stack

    pg, server = postgres_stack(tmp / "server", any_free_port())
    try:
        pg.ensure()
        server.ensure()
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubfleet-bench-") as tmp:
        root = Path(tmp) / "fleet"
        write_fleet(root, args.clusters, args.hubs, args.parallelism)
        os.environ["HUBFLEET_FLEET"] = str(root)
        install_stub(args.latency)
        with prefect_server(args.server, Path(tmp)):
            result = asyncio.run(run(args.clusters, args.hubs, args.parallelism, args.latency))
        result["prefect_server"] = args.server
    out = REPO / "benchmarks" / "results" / "deploy_fleet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
