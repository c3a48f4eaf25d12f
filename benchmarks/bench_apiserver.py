"""One cluster's API server under a fleet upgrade: 100 hubs on one cluster, real everything.

Real: the test control plane (kube-apiserver, etcd, controller-manager, scheduler; kwok
nodes make pods Ready, since the one real node cannot hold 100 hubs), helm 3 with the
upstream z2jh chart, a Prefect server (PostgreSQL by default), and hubfleet's own flows:
`deploy_fleet` installs the hubs at 4.4.0, `upgrade_fleet` moves them to the next version
(a copy of 4.4.0 under another version, testenv.chartrepo.NEXT_VERSION: every hub's pods
are replaced, as in a real upgrade) at the fleet's `parallelism`, with the cluster's
client-side rate limit (`api_qps`, `api_burst` in cluster.yaml; `--no-rate-limit` sets
api_qps: 0, i.e. off).

The cluster has `--hubs` bench hubs (1 staging, the rest prod) and 3 calibration hubs.
Measured, in this order:
1. install: `deploy_fleet` of every hub (the support chart first).
2. one hub alone: each calibration hub upgraded by `deploy_hub` (as `deploy_fleet` runs
   it, with a parallelism slot) with nothing else running; the median is the single hub's
   upgrade time. The support chart's step is timed alone too (`deploy_support`).
3. the upgrade: `upgrade_fleet` of the bench hubs. Critical path at that parallelism =
   support step + single hub's time x hub steps (ceil(staging/P) + ceil(prod/P));
   ratio = wall / critical path (target <= 1.2).
Around each phase the API server's /metrics are read (apiserver_request_total by code;
any apiserver_flowcontrol_*, *dropped*, *terminations* series; the in-flight gauges are
not sampled during a phase, since a reader of /metrics takes an in-flight slot itself),
and the audit log (one line per request) attributes requests and 429s to the client's
user agent (Helm, hubfleet, the controllers, kwok). At the end every
bench hub must be on the new version with its pods Ready.

`--max-requests-inflight` / `--max-mutating-requests-inflight` make the API server small
enough to throttle (its defaults are 400/200). hubfleet reaches it as the control plane's
deployer (cluster-admin by RBAC), since the in-flight limits exempt system:masters, which
`--as-admin` uses instead. Results go under `--label` in
benchmarks/results/apiserver.json (other labels' results are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
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
os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
os.environ.setdefault("PREFECT_API_DATABASE_TIMEOUT", "60")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")

CLUSTER = "one"
CALIBRATION = ("cal0", "cal1", "cal2")
SHARED_CHARTS = REPO.parent / "shared" / "charts"


def bench_pools() -> tuple[Any, ...]:
    """The default node pools, big enough for 100 z2jh hubs: each hub has 4 core pods
    (hub, proxy, 2 user-schedulers at 50m CPU) and a continuous image puller pod per user
    node. With the test defaults (2 x 110 pods, 3.9 CPU per core node) hubs past the ~50th
    stay Pending, and the readiness gate fails them, as it should."""
    from dataclasses import replace

    from testenv.controlplane import DEFAULT_POOLS

    return tuple(replace(p, cpu="64", memory="512Gi", pods="600") for p in DEFAULT_POOLS)


def write_fleet(root: Path, hubs: int, parallelism: int, qps: float, burst: int) -> list[str]:
    """One kubeconfig cluster: `hubs` bench hubs (b000 staging) + the calibration hubs."""
    d = root / "clusters" / CLUSTER
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text(
        f"name: bench\nparallelism: {parallelism}\nchart_version: 4.4.0\n"
        "values: [common.values.yaml]\n"
    )
    # A prod hub needs a login (hubfleet.auth): nobody logs in to these (null).
    (root / "common.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
    )
    names = [f"b{i:03d}" for i in range(hubs)]
    lines = [
        f"name: {CLUSTER}",
        "provider: kubeconfig",
        "kubeconfig: {context: hubfleet-testenv}",
        f"api_qps: {qps:g}",
        f"api_burst: {burst}",
        "hubs:",
    ]
    for i, name in enumerate([*names, *CALIBRATION]):
        tier = "staging" if i == 0 else "prod"
        lines.append(
            f"  - {{name: {name}, domain: {name}.bench.test, tier: {tier}, kind: standing}}"
        )
    (d / "cluster.yaml").write_text("\n".join(lines) + "\n")
    return names


def set_chart_version(root: Path, version: str) -> None:
    path = root / "fleet.yaml"
    text = re.sub(r"chart_version: \S+", f"chart_version: {version}", path.read_text())
    path.write_text(text)


# --- the API server's side ----------------------------------------------------------------

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """The series worth keeping: request totals by code, and anything about throttling."""
    kept: dict[str, float] = {}
    for line in text.splitlines():
        m = _SERIES.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "apiserver_request_total":
            code = re.search(r'code="(\d+)"', labels)
            key = f"apiserver_request_total{{code={code.group(1) if code else '?'}}}"
            kept[key] = kept.get(key, 0) + value
        elif (
            (name.startswith("apiserver_flowcontrol_") and name.endswith("_total"))
            or "dropped" in name
            or name.startswith("apiserver_request_terminations_total")
        ):
            kept[name] = kept.get(name, 0) + value
    return kept


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}


def agent_of(user_agent: str) -> str:
    """A client's family from its user agent: helm, hubfleet, kube-controller-manager,
    kube-scheduler, kwok, python-urllib (this benchmark's metrics reads), ..."""
    return user_agent.split("/")[0].lower() or "?"


def audit_between(path: Path, start: int, end: int) -> dict[str, Any]:
    """Requests and 429s by client family in the audit log bytes [start, end)."""
    requests: Counter[str] = Counter()
    throttled: Counter[str] = Counter()
    what: Counter[str] = Counter()
    with path.open("rb") as f:
        f.seek(start)
        chunk = f.read(end - start)
    for line in chunk.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        family = agent_of(str(event.get("userAgent", "")))
        requests[family] += 1
        if (event.get("responseStatus") or {}).get("code") == 429:
            throttled[family] += 1
            ref = event.get("objectRef") or {}
            who = str(event.get("userAgent", "")).rsplit("/", 1)[-1]  # the controller's SA
            what[f"{family} {who} {event.get('verb')} {ref.get('resource')}"] += 1
    return {
        "requests": dict(requests.most_common()),
        "429": dict(throttled.most_common()),
        "429_top": dict(what.most_common(8)),
    }


@contextmanager
def measured(cp: Any, what: str, out: dict[str, Any]) -> Iterator[None]:
    """Wall time, metrics delta, in-flight samples and audit counts of one phase."""
    audit = cp.audit_log_path
    a0 = audit.stat().st_size if audit and audit.exists() else 0
    m0 = parse_metrics(cp.metrics())
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    m1 = parse_metrics(cp.metrics())
    d = delta(m0, m1)
    total = sum(v for k, v in d.items() if k.startswith("apiserver_request_total"))
    phase: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "apiserver_requests": int(total),
        "apiserver_requests_per_s": round(total / wall, 1) if wall else None,
        "apiserver_429": int(d.get("apiserver_request_total{code=429}", 0)),
        "metrics_delta": {k: v for k, v in d.items() if v},
        "load_average_start": [round(x, 2) for x in load0],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    if audit and audit.exists():
        by_agent = audit_between(audit, a0, audit.stat().st_size)
        phase["by_client"] = by_agent
        ours = sum(by_agent["requests"].get(k, 0) for k in ("helm", "hubfleet"))
        phase["hubfleet_requests"] = ours
        phase["hubfleet_requests_per_s"] = round(ours / wall, 1) if wall else None
        phase["hubfleet_429"] = sum(by_agent["429"].get(k, 0) for k in ("helm", "hubfleet"))
    out[what] = phase
    print(f"[bench] {what}: {json.dumps(phase)}", flush=True)


# --- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace, root: Path, names: list[str], cp: Any) -> dict[str, Any]:
    from kubernetes import client, config

    from blocks.cluster_access import ClusterAccess
    from flows.deploy_fleet import deploy_fleet, deploy_support
    from flows.deploy_hub import deploy_hub
    from flows.upgrade_fleet import upgrade_fleet
    from hubfleet.loader import load_fleet
    from hubfleet.plan import plan_fleet
    from hubfleet.results import Outcome
    from tasks.locks import ensure_concurrency_limits
    from testenv.chartrepo import NEXT_VERSION
    from testenv.volumes import create_volumes

    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    # The control plane has no provisioner: every hub database's PVC binds one of these.
    create_volumes(api, "bench-pv", len(names) + len(CALIBRATION) + 5)
    # hubfleet as a cluster-admin through RBAC, as a fleet's deployer is: system:masters
    # (the admin kubeconfig) is exempt from the apiserver's in-flight limits.
    kubeconfig = cp.kubeconfig if args.as_admin else cp.deployer_kubeconfig
    await ClusterAccess(
        kubeconfig=kubeconfig.read_text(), context="hubfleet-testenv", server=cp.server
    ).save(CLUSTER, overwrite=True)
    await ensure_concurrency_limits(load_fleet(root))
    phases: dict[str, Any] = {}

    def outcomes_of(result: Any) -> Counter[str]:
        return Counter(str(o.outcome) for o in result.outcomes)

    # 1. install every hub
    with measured(cp, "install", phases):
        state = await deploy_fleet(
            selection=[CLUSTER], gate="rollout", operator="bench", return_state=True
        )
        installed = await state.aresult(raise_on_failure=False)
    phases["install"]["outcomes"] = outcomes_of(installed)

    set_chart_version(root, NEXT_VERSION)
    # 2. one hub alone, and the support step alone
    singles = []
    with measured(cp, "single_hub", phases):
        for hub in CALIBRATION:
            t0 = time.perf_counter()
            await deploy_hub(
                cluster=CLUSTER, hub=hub, gate="rollout", operator="bench", fleet_slot=True
            )
            singles.append(time.perf_counter() - t0)
    with measured(cp, "support_alone", phases):
        await deploy_support(cluster=CLUSTER, operator="bench")
    t_hub = statistics.median(singles)
    t_support = phases["support_alone"]["wall_s"]

    # 3. the upgrade
    fleet = load_fleet(root)
    selection = [f"{CLUSTER}/{h}" for h in names]
    plan = plan_fleet(
        fleet, selection, {(CLUSTER, h): "4.4.0" for h in names}, only_version_changes=True
    )
    (cplan,) = plan.clusters
    hub_steps = cplan.steps() - int(cplan.support)
    with measured(cp, "upgrade", phases):
        state = await upgrade_fleet(
            selection=selection, gate="rollout", operator="bench", return_state=True
        )
        upgraded = await state.aresult(raise_on_failure=False)
    phases["upgrade"]["outcomes"] = outcomes_of(upgraded)
    durations = sorted(o.duration_s for o in upgraded.outcomes if o.outcome is Outcome.deployed)

    # Every bench hub: on the new version (helm), its Deployments rolled out, pods Ready.
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    not_ready = []
    for hub in names:
        deps = apps.list_namespaced_deployment(hub, label_selector=f"release={hub}").items
        pods = core.list_namespaced_pod(hub, label_selector=f"release={hub}").items
        chart_labels = {d.metadata.labels.get("chart") for d in deps}
        ok = (
            deps
            and chart_labels == {f"jupyterhub-{NEXT_VERSION}"}
            and all((d.status.ready_replicas or 0) == d.spec.replicas for d in deps)
            and all(
                any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                for p in pods
                if not p.metadata.deletion_timestamp
            )
        )
        if not ok:
            not_ready.append(hub)
    api.close()

    critical = t_support + t_hub * hub_steps
    wall = phases["upgrade"]["wall_s"]
    return {
        "hubs": len(names),
        "identity": "system:masters (exempt from in-flight limits)"
        if args.as_admin
        else "testenv-deployer (cluster-admin by RBAC; in-flight limits apply)",
        "parallelism": args.parallelism,
        "api_qps": args.qps if not args.no_rate_limit else "off",
        "api_burst": args.burst,
        "max_requests_inflight": args.max_requests_inflight or "default (400)",
        "max_mutating_requests_inflight": args.max_mutating_requests_inflight or "default (200)",
        "upgrade_wall_s": wall,
        "single_hub_upgrade_s": round(t_hub, 1),
        "single_hub_upgrades_s": [round(s, 1) for s in singles],
        "support_step_s": t_support,
        "hub_steps": hub_steps,
        "critical_path_s": round(critical, 1),
        "critical_path_how": (
            "support step alone + median of 3 hubs each upgraded alone by deploy_hub "
            "(lock, namespace, helm history, helm upgrade --wait, readiness gate) x hub steps "
            "(ceil(staging/P) + ceil(prod/P))"
        ),
        "ratio": round(wall / critical, 3),
        "target_ratio": 1.2,
        "upgrade_requests_per_s": phases["upgrade"]["apiserver_requests_per_s"],
        "upgrade_hubfleet_requests_per_s": phases["upgrade"].get("hubfleet_requests_per_s"),
        "upgrade_429": phases["upgrade"]["apiserver_429"],
        "upgrade_hubfleet_429": phases["upgrade"].get("hubfleet_429"),
        "hub_upgrade_duration_s": {
            "min": durations[0] if durations else None,
            "median": statistics.median(durations) if durations else None,
            "max": durations[-1] if durations else None,
        },
        "hubs_not_ready_at_end": not_ready,
        "phases": phases,
        "cpus": os.cpu_count(),
        "note": "2-core machine shared with other engineers' work: see the load averages",
    }


@contextmanager
def prefect_server(kind: str, tmp: Path) -> Iterator[None]:
    """A throwaway Prefect server on PostgreSQL or SQLite, stopped (by PID) afterwards."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hubfleet.server import PrefectServer, any_free_port, postgres_stack

    if kind == "sqlite":
        server = PrefectServer(tmp / "prefect", port=any_free_port())
        try:
            server.ensure()
            os.environ.update(server.client_env())
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield
        finally:
            server.stop()
        return
    pg, server = postgres_stack(tmp / "server", any_free_port())
    try:
        pg.ensure()
        server.ensure()
        os.environ.update(server.client_env())
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        server.stop()
        pg.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=100, help="bench hubs (1 staging)")
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--qps", type=float, default=20.0, help="cluster.yaml api_qps")
    parser.add_argument("--burst", type=int, default=40, help="cluster.yaml api_burst")
    parser.add_argument("--no-rate-limit", action="store_true", help="api_qps: 0 (off)")
    parser.add_argument("--max-requests-inflight", type=int, default=None)
    parser.add_argument("--max-mutating-requests-inflight", type=int, default=None)
    parser.add_argument("--server", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--label", default="limited", help="key of this run in the JSON")
    parser.add_argument(
        "--as-admin",
        action="store_true",
        help="reach the cluster as system:masters (exempt from the in-flight limits)",
    )
    args = parser.parse_args()

    from testenv.chartrepo import NEXT_VERSION, ChartRepository
    from testenv.controlplane import ControlPlane

    with tempfile.TemporaryDirectory(prefix="hubfleet-bench-") as tmp:
        root = Path(tmp) / "fleet"
        qps = 0.0 if args.no_rate_limit else args.qps
        names = write_fleet(root, args.hubs, args.parallelism, qps, args.burst)
        os.environ["HUBFLEET_FLEET"] = str(root)
        os.environ["HUBFLEET_DATA_DIR"] = str(Path(tmp) / "data")
        repo = ChartRepository(SHARED_CHARTS.glob("jupyterhub-4.4.0.tgz"), Path(tmp) / "charts")
        repo.add_version(SHARED_CHARTS / "jupyterhub-4.4.0.tgz", NEXT_VERSION)
        os.environ["HUBFLEET_CHART_REPOSITORY"] = repo.url
        cp = ControlPlane(
            pools=bench_pools(),
            max_requests_inflight=args.max_requests_inflight,
            max_mutating_requests_inflight=args.max_mutating_requests_inflight,
            audit_log=True,
            progress=lambda m: print(f"[testenv] {m}", flush=True),
        )
        try:
            cp.start()
            with prefect_server(args.server, Path(tmp)):
                result = asyncio.run(run(args, root, names, cp))
        finally:
            if cp.audit_log_path is not None:
                cp.audit_log_path.unlink(missing_ok=True)  # large; not kept in last-logs
            cp.stop()
            repo.stop()
        result["prefect_server"] = args.server
    out = REPO / "benchmarks" / "results" / "apiserver.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        runs = json.loads(out.read_text())
    except (OSError, ValueError):
        runs = {}
    runs[args.label] = result
    out.write_text(json.dumps(runs, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    ok = not result["hubs_not_ready_at_end"]
    print(
        f"[bench] {args.label}: wall {result['upgrade_wall_s']} s, critical path "
        f"{result['critical_path_s']} s, ratio {result['ratio']}, "
        f"{result['upgrade_requests_per_s']} req/s, 429s {result['upgrade_429']}, "
        f"all hubs Ready: {ok}"
    )


if __name__ == "__main__":
    main()
