"""deploy_fleet and deploy_support: change many hubs safely.

Runbook (per cluster, all clusters side by side):
  1. observe what is deployed (helm releases, hub namespaces) and report orphans
  2. plan: support chart, staging hubs, health gate, prod hubs in waves (a markdown artifact)
  3. support chart under the cluster lock (no hub operation runs meanwhile)
  4. staging hubs, at most `parallelism` at once (the cluster's deploy limit)
  5. gate: any staging hub failed → this cluster's prod hubs are blocked, other clusters go on
  6. prod waves; a failed wave blocks the later waves of its cluster
  7. result table artifact: hub, from-version, to-version, outcome, duration
Each hub change is a `deploy_hub` subflow run, with its own post-deploy health gate and
automatic rollback.

What a hub costs the Prefect server is kept small, because a fleet run at 5,000 hubs is
bound by it (see the README's benchmark section): the fleet run takes its hubs' locks per
group of at most `parallelism` hubs and passes them down (tasks.locks.group_locks), passes
down the fleet it read (flows.operation), and reads which hubs have secret blocks once
(tasks.cluster_session.fleet_block_snapshot). Each hub's deploy is still its own flow run
with its `op:`/`cluster:`/`hub:` tags, so the history (and `hubfleet audit`) is per hub.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.states import Failed

from flows.deploy_hub import Gate, HubRolledBack, deploy_hub
from flows.operation import begin_cluster, begin_fleet, current_fleet, fleet_passed_down
from flows.parameters import HelmWait, Placeholders, Selection, WavePercent, WaveSize
from hubfleet.charts import release_version
from hubfleet.errors import HubfleetError
from hubfleet.layers import SUPPORT_CHART
from hubfleet.model import Cluster, Fleet, HubKind, Provider
from hubfleet.plan import ClusterPlan, Deployed, FleetPlan, HubChange, plan_fleet, select
from hubfleet.results import FleetRun, HubOutcome, Outcome, SupportDeployed
from hubfleet.values import secret_values_file, support_layers
from tasks import helm as helm_tasks
from tasks import kube
from tasks.cluster_session import cluster_session, fleet_block_snapshot
from tasks.helm import in_thread
from tasks.local_hub import local_hub
from tasks.locks import LockError, cluster_lock, ensure_concurrency_limits_once, group_locks

SUPPORT_RELEASE = "hubfleet-support"
SUPPORT_NAMESPACE = "hubfleet-system"


def _outcome(change: HubChange, outcome: Outcome, why: str = "", took: float = 0.0) -> HubOutcome:
    return HubOutcome(
        cluster=change.cluster,
        hub=change.hub,
        from_version=change.from_version,
        to_version=change.to_version,
        outcome=outcome,
        why=why,
        duration_s=took,
    )


# --- observing ---------------------------------------------------------------------------


async def observe_cluster(fleet: Fleet, cluster: Cluster) -> tuple[Deployed, list[str]]:
    """What runs on a cluster now: chart version per fleet hub, and orphans (releases or
    hub namespaces the fleet does not list). Changes nothing."""
    if cluster.provider is Provider.local:
        running = {
            (cluster.name, h.name): (h.chart_version or fleet.settings.chart_version)
            if local_hub(fleet, cluster.name, h.name).is_running()
            else None
            for h in cluster.hubs
        }
        return running, []
    known = {h.name for h in cluster.hubs}
    async with cluster_session(cluster.name) as session:
        releases = await helm_tasks.helm_releases(session.helm)
        namespaces = await kube.hub_namespaces(session.api)
    deployed: dict[tuple[str, str], str | None] = {(cluster.name, h): None for h in known}
    orphans = []
    for rel in releases:
        name, ns = rel["name"], rel["namespace"]
        if name == SUPPORT_RELEASE and ns == SUPPORT_NAMESPACE:
            continue
        if name in known and ns == name:
            deployed[(cluster.name, name)] = release_version(str(rel["chart"]))
        else:
            orphans.append(f"release {ns}/{name}")
    orphans += [f"namespace {ns}" for ns in namespaces if ns not in known]
    return deployed, sorted(set(orphans))


async def remove_orphans(cluster: Cluster, orphans: list[str]) -> None:
    """Uninstall orphan releases and delete orphan hub namespaces: changes the cluster."""
    async with cluster_session(cluster.name) as session:
        for orphan in orphans:
            kind, _, name = orphan.partition(" ")
            if kind == "release":
                ns, _, release = name.partition("/")
                await helm_tasks.helm_uninstall(session.helm, release, ns)
            else:
                await kube.delete_namespace(session.api, name)


# --- support chart -----------------------------------------------------------------------


@flow(name="deploy_support", flow_run_name="deploy_support {cluster}")
async def deploy_support(
    cluster: str,
    dry_run: bool = False,
    operator: str | None = None,
    placeholders: Placeholders = None,
) -> SupportDeployed:
    """Install or upgrade helm/support on a cluster under the cluster lock (excludes every
    hub operation there). Creates the hub namespaces so their quota/limit defaults apply.
    `placeholders` sets the user-placeholder replicas (event pre-warming); None keeps them.
    The cluster's optional `support.values.yaml` (placeholder size, placement, image, ...)
    is checked against the chart's schema first and layered under what hubfleet sets."""
    op = await begin_cluster("deploy_support", cluster, operator)
    fleet, spec = op.fleet, op.cluster
    if spec.provider is Provider.local:
        raise HubfleetError(
            f"cluster {cluster!r} is a local cluster (hubs as processes on this machine): it "
            "has no support chart; deploy_support is for Kubernetes clusters. Nothing was run."
        )
    # ValuesInvalid (file:line: field: message) before anything runs.
    files = [layer.path for layer in support_layers(fleet, cluster)[1:] if layer.path]
    chart = SUPPORT_CHART
    async with cluster_session(cluster) as session:
        helm, api = session.helm, session.api
        hubs = await in_thread(_support_namespaces, api, spec)
        if placeholders is None:
            placeholders = await in_thread(_current_placeholders, helm)
        values = {"hubNamespaces": hubs, "userPlaceholder": {"replicas": placeholders}}
        with secret_values_file(values) as values_file:
            if dry_run:
                if await in_thread(kube.namespace_exists, api, SUPPORT_NAMESPACE):
                    changes = await helm_tasks.helm_diff(
                        helm, SUPPORT_RELEASE, chart, SUPPORT_NAMESPACE, [*files, values_file]
                    )
                else:
                    rendered = await in_thread(
                        helm.template,
                        SUPPORT_RELEASE,
                        chart,
                        SUPPORT_NAMESPACE,
                        [*files, values_file],
                    )
                    changes = helm_tasks.diff_manifests("", rendered)
                return SupportDeployed(cluster=cluster, dry_run=True, changes=changes)
            await ensure_concurrency_limits_once(fleet)
            async with cluster_lock(cluster):
                await kube.ensure_namespace(api, SUPPORT_NAMESPACE)
                for hub in hubs:
                    await kube.ensure_namespace(api, hub, hub)
                await helm_tasks.helm_upgrade(
                    helm, SUPPORT_RELEASE, chart, SUPPORT_NAMESPACE, [*files, values_file], "3m"
                )
    get_run_logger().info("support chart on %s: %d placeholder(s)", cluster, placeholders)
    return SupportDeployed(cluster=cluster, placeholders=placeholders)


def _support_namespaces(api: Any, cluster: Cluster) -> list[str]:
    """The hub namespaces the support chart covers (and creates): every hub's, except an
    event hub whose event has ended and whose namespace is gone (expired: it stays gone)."""
    now = datetime.now(UTC)
    return [
        h.name
        for h in cluster.hubs
        if not (
            h.kind is HubKind.event
            and h.event is not None
            and now >= h.event.end
            and not kube.namespace_exists(api, h.name)
        )
    ]


def _current_placeholders(helm: helm_tasks.Helm) -> int:
    """The user-placeholder replicas deployed now (0 if the support chart is not)."""
    if not helm.status(SUPPORT_RELEASE, SUPPORT_NAMESPACE):
        return 0
    current = helm.values(SUPPORT_RELEASE, SUPPORT_NAMESPACE)
    return int((current.get("userPlaceholder") or {}).get("replicas", 0))


# --- the fleet run -----------------------------------------------------------------------


async def _change_hub(
    change: HubChange, operator: str, gate: Gate, wait_timeout: str
) -> HubOutcome:
    start = time.monotonic()
    try:
        # deploy_hub runs under its hub's lock and a deploy slot, passed down by the caller.
        state = await deploy_hub(
            cluster=change.cluster,
            hub=change.hub,
            operator=operator,
            gate=gate,
            wait_timeout=wait_timeout,
            fleet_slot=True,
            return_state=True,
        )
    except Exception as exc:
        # The subflow could not even be run (Prefect API unavailable, lock service error):
        # this hub failed, its cluster's later hubs are blocked, other clusters carry on.
        get_run_logger().error(
            "%s/%s: could not run deploy_hub: %s", change.cluster, change.hub, exc
        )
        took = round(time.monotonic() - start, 1)
        return _outcome(change, Outcome.failed, f"could not run deploy_hub ({exc})", took)
    took = round(time.monotonic() - start, 1)
    if state.is_completed():
        return _outcome(change, Outcome.deployed, took=took)
    try:
        await state.aresult()  # raises the flow's exception: its type says what happened
        return _outcome(change, Outcome.failed, state.message or "failed", took)
    except HubRolledBack as exc:
        return _outcome(change, Outcome.rolled_back, str(exc), took)
    except Exception as exc:
        return _outcome(change, Outcome.failed, str(exc), took)


async def _run_cluster(
    cp: ClusterPlan, operator: str, gate: Gate, wait_timeout: str
) -> list[HubOutcome]:
    """One cluster's steps in order; a failure blocks this cluster's later steps only."""
    logger = get_run_logger()
    outcomes: list[HubOutcome] = []

    def blocked(changes: list[HubChange], why: str) -> list[HubOutcome]:
        return [_outcome(c, Outcome.blocked, why) for c in changes]

    if cp.support:
        support = await deploy_support(cluster=cp.cluster, operator=operator, return_state=True)
        if not support.is_completed():
            logger.error("%s: support chart failed; no hub of this cluster changes", cp.cluster)
            return blocked(cp.changes, f"support chart failed ({support.message})")
    steps = [("staging", cp.staging)] if cp.staging else []
    steps += [(f"prod wave {i}", wave) for i, wave in enumerate(cp.waves, 1)]
    for index, (name, changes) in enumerate(steps):
        results = []
        for group in _groups(changes, cp.parallelism):
            results += await _change_group(cp.cluster, group, operator, gate, wait_timeout)
        outcomes += results
        failed = [o for o in results if o.outcome is not Outcome.deployed]
        if failed:
            rest = [c for _, later in steps[index + 1 :] for c in later]
            why = f"{name} failed ({', '.join(o.hub for o in failed)})"
            if name == "staging":
                why = f"health gate: staging failed ({', '.join(o.hub for o in failed)})"
            logger.error("%s: %s; %d later hub(s) blocked", cp.cluster, why, len(rest))
            return outcomes + blocked(rest, why)
    return outcomes


def _groups(changes: list[HubChange], size: int) -> list[list[HubChange]]:
    """A step's hubs in groups of at most `size` (the cluster's parallelism), in order."""
    size = max(size, 1)
    return [changes[i : i + size] for i in range(0, len(changes), size)]


async def _change_group(
    cluster: str, group: list[HubChange], operator: str, gate: Gate, wait_timeout: str
) -> list[HubOutcome]:
    """Change a group of hubs at once, under their locks taken together (`group_locks`)."""
    try:
        async with group_locks(cluster, [c.hub for c in group]):
            return list(
                await asyncio.gather(*(_change_hub(c, operator, gate, wait_timeout) for c in group))
            )
    except LockError as exc:
        # The lock service refused (a limit deleted, the server failing): these hubs failed,
        # the cluster's later hubs are blocked, other clusters carry on.
        get_run_logger().error("%s: could not lock %s: %s", cluster, [c.hub for c in group], exc)
        return [_outcome(c, Outcome.failed, f"could not take its lock ({exc})") for c in group]


@dataclass(frozen=True)
class Observed:
    """What runs on the selected clusters now (step 1)."""

    deployed: dict[tuple[str, str], str | None]
    orphans: dict[str, list[str]]  # per cluster
    unreachable: dict[str, str]  # cluster -> why


async def observe(fleet: Fleet, clusters: list[Cluster]) -> Observed:
    """Step 1: each cluster's deployed chart versions and orphans; an unreachable cluster is
    recorded (its hubs fail), never a reason to stop the others."""
    logger = get_run_logger()
    found = await asyncio.gather(
        *(observe_cluster(fleet, c) for c in clusters), return_exceptions=True
    )
    seen = Observed({}, {}, {})
    for cluster, result in zip(clusters, found, strict=True):
        if isinstance(result, BaseException):
            seen.unreachable[cluster.name] = str(result)
            logger.error("%s: cannot observe the cluster: %s", cluster.name, result)
            continue
        seen.deployed.update(result[0])
        if result[1]:
            seen.orphans[cluster.name] = result[1]
            logger.warning("%s: orphans (not in the fleet): %s", cluster.name, result[1])
    return seen


async def publish_plan(
    op_name: str, who: str, plan: FleetPlan, seen: Observed, dry_run: bool, removing: bool
) -> None:
    """Step 2's artifact: the plan, the orphans (and whether this run removes them), the
    clusters that could not be observed."""
    orphan_md = "".join(
        f"\n## Orphans on {c}\n\n"
        + "".join(f"- {o}\n" for o in items)
        + (
            "\n(removed in this run)\n"
            if removing and not dry_run
            else "\n(reported only; run with remove_orphans=true to remove)\n"
        )
        for c, items in seen.orphans.items()
    )
    unreachable_md = "".join(f"\n- {c}: unreachable: {why}" for c, why in seen.unreachable.items())
    await acreate_markdown_artifact(
        key=op_name.replace("_", "-") + "-plan",
        markdown=plan.markdown(f"{'Dry run: ' if dry_run else ''}{op_name} plan by {who}")
        + orphan_md
        + unreachable_md,
        description=f"{op_name}: {len(plan.changes)} hub change(s)",
    )


async def execute(plan: FleetPlan, who: str, gate: Gate, wait_timeout: str) -> list[HubOutcome]:
    """Steps 3-6: every cluster's steps, clusters side by side (see `_run_cluster`)."""
    per_cluster = await asyncio.gather(
        *(_run_cluster(cp, who, gate, wait_timeout) for cp in plan.clusters),
        return_exceptions=True,  # one cluster's crash never stops the others
    )
    outcomes: list[HubOutcome] = []
    for cp, results in zip(plan.clusters, per_cluster, strict=True):
        if isinstance(results, BaseException):
            if not isinstance(results, Exception):
                raise results  # cancellation and the like are not a cluster's failure
            outcomes += [_outcome(c, Outcome.failed, str(results)) for c in cp.changes]
        else:
            outcomes += results
    return outcomes


async def report(op_name: str, summary: FleetRun) -> FleetRun:
    """Step 7: the result table; a run with any hub not deployed ends Failed (notifications,
    the UI's red) and still carries the summary as its data."""
    failed, total = summary.not_deployed, len(summary.outcomes)
    await acreate_table_artifact(
        key=op_name.replace("_", "-") + "-result",
        table=[o.row() for o in summary.outcomes],
        description=f"{op_name}: {total - len(failed)}/{total} deployed",
    )
    if not failed:
        return summary
    message = f"{len(failed)} of {total} hub(s) not deployed: " + ", ".join(
        f"{o.cluster}/{o.hub}" for o in failed[:10]
    )
    get_run_logger().error(message)
    return Failed(message=message, data=summary)  # type: ignore[return-value]


async def run_fleet_plan(
    op_name: str,
    selection: list[str],
    dry_run: bool,
    operator: str | None,
    only_version_changes: bool,
    wave_size: int | None,
    wave_percent: float | None,
    remove_orphaned: bool,
    gate: Gate,
    wait_timeout: str,
) -> FleetRun:
    """Shared by deploy_fleet and upgrade_fleet: the module's runbook, step by step."""
    fleet = current_fleet()
    chosen = select(fleet, selection)
    names = sorted({name for name, _ in chosen})
    op = await begin_fleet(op_name, operator, names, fleet=fleet)
    clusters = [c for c in op.fleet.clusters if c.name in names]

    # 1. observe what is deployed, and orphans
    seen = await observe(op.fleet, clusters)
    # 2. plan (an artifact); unreachable clusters are left out of it
    plan = plan_fleet(
        op.fleet,
        selection,
        seen.deployed,
        only_version_changes=only_version_changes,
        wave_size=wave_size,
        wave_percent=wave_percent,
    )
    plan = FleetPlan([cp for cp in plan.clusters if cp.cluster not in seen.unreachable])
    await publish_plan(op_name, op.operator, plan, seen, dry_run, remove_orphaned)
    if dry_run:
        return FleetRun(
            dry_run=True,
            changes=[c.__dict__ for c in plan.changes],
            orphans=seen.orphans,
            unreachable=seen.unreachable,
        )
    if remove_orphaned:
        for cluster in clusters:
            if seen.orphans.get(cluster.name):
                await remove_orphans(cluster, seen.orphans[cluster.name])
    # 3-6. support chart, staging, gate, prod waves: per cluster, clusters side by side
    await ensure_concurrency_limits_once(op.fleet)
    await fleet_block_snapshot()
    with fleet_passed_down(op):
        outcomes = await execute(plan, op.operator, gate, wait_timeout)
    outcomes += [
        HubOutcome(
            cluster=c,
            hub=h,
            from_version=None,
            to_version="-",
            outcome=Outcome.failed,
            why=f"cluster unreachable ({why})",
        )
        for c, why in seen.unreachable.items()
        for cc, h in chosen
        if cc == c
    ]
    # 7. the result table
    summary = FleetRun(
        outcomes=outcomes,
        orphans=seen.orphans,
        unreachable=seen.unreachable,
        critical_path_steps=plan.critical_path_steps(),
    )
    return await report(op_name, summary)


@flow(name="deploy_fleet", flow_run_name="deploy_fleet {selection}")
async def deploy_fleet(
    selection: Selection = None,
    dry_run: bool = False,
    operator: str | None = None,
    wave_size: WaveSize = None,
    wave_percent: WavePercent = None,
    remove_orphans: bool = False,
    gate: Gate = "auto",
    wait_timeout: HelmWait = "5m",
) -> FleetRun:
    """Deploy the selected hubs ('*', 'cluster' or 'cluster/hub'): support first, staging,
    a health gate, then prod in waves; clusters in parallel. Orphans are reported, and
    removed only with remove_orphans=true. If any hub is not deployed the run ends Failed,
    its data still the summary (outcome per hub)."""
    return await run_fleet_plan(
        "deploy_fleet",
        selection or ["*"],
        dry_run,
        operator,
        False,
        wave_size,
        wave_percent,
        remove_orphans,
        gate,
        wait_timeout,
    )
