"""check_hub_health: probe one hub level by level and say why it is (un)healthy.

Levels, shallow to deep: reachable (/hub/health) → api (/hub/api version) → auth (the ops
token is accepted) → spawn (the health user's server runs Python in a kernel) → tls
(days until the certificate expires) → k8s (Deployments ready, pods not stuck, PVCs
bound). `depth="shallow"` stops after auth; `"deep"` runs everything; a level name runs
up to that level. Each probe is a task of tasks/probes.py, retried by the one policy
(`hubfleet.health.RETRY`) on transient errors only, so one blip is absorbed before it
counts; after reachable or api fails only k8s still runs (`hubfleet.health.blocked`).
deploy_hub calls this same flow after every deploy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import flow_run

from blocks.hub_token import HubOpsToken
from flows.operation import HubOperation, begin_hub
from hubfleet.errors import HubfleetError
from hubfleet.health import (
    ALL_PASSED,
    HealthReport,
    Level,
    ProbeResult,
    blocked,
    judge,
    judge_tls,
    levels_for,
)
from hubfleet.model import Provider
from hubfleet.results import HubHealth, ProbeRow
from tasks import probes
from tasks.hub_access import canonical_url, hub_endpoint
from tasks.hub_credentials import load_ops_token


def hub_url(op: Any) -> str | None:
    """Where users reach the hub: the local process's port, or https://<domain>."""
    return canonical_url(op.fleet, op.cluster.name, op.hub.name)


@flow(name="check_hub_health", flow_run_name="check_hub_health {cluster}/{hub}")
async def check_hub_health(
    cluster: str, hub: str, depth: str = "shallow", operator: str | None = None
) -> HubHealth:
    """Probe one hub up to `depth` (shallow | deep | a level) and give a verdict."""
    levels = levels_for(depth)  # a bad depth fails before anything is probed
    op = await begin_hub("check_hub_health", cluster, hub, operator)
    url = hub_url(op)
    try:
        async with hub_endpoint(op.fleet, cluster, hub) as endpoint:
            results = await run_probes(op, endpoint, levels)
    except HubfleetError as exc:  # e.g. no Ready proxy pod to forward to
        results = [ProbeResult(Level.reachable, False, None, str(exc))]
    report = judge(op.target, results)
    health = health_result(report, url, depth)
    await record_check(health)
    return health


async def run_probes(
    op: HubOperation, url: str | None, levels: tuple[Level, ...]
) -> list[ProbeResult]:
    """Each level in order; after reachable or api fails, only k8s (if asked) still runs."""
    if url is None:
        return [ProbeResult(Level.reachable, False, None, "never deployed (no local state)")]
    local = op.cluster.provider is Provider.local
    results: list[ProbeResult] = []
    block: HubOpsToken | None = None
    for level in levels:
        # After reachable or api failed nothing answers over HTTP; Kubernetes can still
        # say why, so k8s runs.
        if blocked(level, results):
            continue
        if level is Level.reachable:
            result = await _timed(level, probes.probe_reachable(url))
            result = ProbeResult(level, result.ok, result.latency_ms, result.reason)
        elif level is Level.api:
            result = await _timed(level, probes.probe_api(url))
        elif level is Level.auth:
            block = await load_ops_token(op.cluster.name, op.hub.name)
            result = await _timed(level, probes.probe_auth(url, block))
        elif level is Level.spawn:
            if block is None or not all(r.ok for r in results):
                result = _skip(level, "not run: needs a working ops token (auth failed)")
            else:
                result = await _timed(level, probes.probe_spawn(url, block))
        elif level is Level.tls:
            if local:
                result = _skip(level, "plain-http local hub: no certificate to check")
            elif op.cluster.hub_access == "port-forward":
                result = _skip(level, "reached through the Kubernetes API: no certificate")
            else:
                start = time.perf_counter()
                try:
                    not_after = await probes.probe_tls(op.hub.domain)
                    result = judge_tls(not_after, datetime.now(UTC), _ms(start))
                except Exception as exc:
                    result = ProbeResult(level, False, _ms(start), str(exc))
        else:  # k8s
            if local:
                result = _skip(level, "local hub: no Kubernetes objects to check")
            else:
                try:
                    result = await probes.probe_k8s(op.cluster.name, op.hub.name)
                except Exception as exc:
                    result = ProbeResult(level, False, None, str(exc))
        results.append(result)
    return results


async def _timed(level: Level, call: Any) -> ProbeResult:
    """Await a probe task; its final failure (after retries) becomes a failed result."""
    start = time.perf_counter()
    try:
        value = await call
    except Exception as exc:
        return ProbeResult(level, False, _ms(start), reason=str(exc) or type(exc).__name__)
    if level is Level.reachable:
        return ProbeResult(level, True, round(value, 1))
    return ProbeResult(level, True, _ms(start), detail=str(value))


def _skip(level: Level, reason: str) -> ProbeResult:
    return ProbeResult(level, True, None, reason, skipped=True)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def record_check(health: HubHealth) -> None:
    """The run's record: a markdown report for people, one history row for `hubfleet health`."""
    cluster, hub = health.hub.split("/", 1)
    await acreate_markdown_artifact(
        key=f"health-{cluster}-{hub}",
        markdown=_markdown(health),
        description=f"Health of {health.hub}: {health.verdict}",
    )
    await acreate_table_artifact(
        key=f"health-history-{cluster}-{hub}",
        table=[history_row(health.as_data())],
        description=f"{health.hub}: {health.verdict} ({health.depth})",
    )


def history_row(result: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One hub's check (`HubHealth.as_data()`, or a `report_dict`) as a row of the history
    and sweep tables: hub, verdict, failing level and reason, then one column per level
    (status, latency)."""
    row: dict[str, Any] = {
        "hub": result["hub"],
        "verdict": result["verdict"],
        "level": result["level"],
        "reason": "" if result["reason"] == ALL_PASSED else result["reason"],
        "depth": result["depth"],
        "run": result.get("run", ""),
        "checked_at": result.get("checked_at", ""),
    }
    seen = {p["level"]: p for p in result["probes"]}
    for level in Level:
        p = seen.get(level.value)
        if p is None:
            row[level.value] = "-"
        elif p["latency_ms"] is None:
            row[level.value] = p["status"]
        else:
            row[level.value] = f"{p['status']} {p['latency_ms']:.0f}ms"
    row.update(extra)
    return row


def health_result(report: HealthReport, url: str | None, depth: str = "shallow") -> HubHealth:
    """The flow's result: verdict, reason and every probe."""
    return HubHealth(
        hub=report.hub,
        url=url,
        depth=depth,
        verdict=report.verdict,
        level=report.level,
        reason=report.reason,
        latency_ms=report.latency_ms,
        run=str(flow_run.get_id() or ""),
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        probes=[
            ProbeRow(
                level=p.level.value,
                ok=p.ok,
                status=p.status,
                latency_ms=p.latency_ms,
                reason=p.reason,
                detail=p.detail,
            )
            for p in report.probes
        ],
    )


def report_dict(report: HealthReport, url: str | None, depth: str = "shallow") -> dict[str, Any]:
    """A check's result as plain JSON-able data (a fleet sweep's row source, which the sweep
    adds its usage sample to)."""
    return health_result(report, url, depth).as_data()


def _markdown(health: HubHealth) -> str:
    rows = "\n".join(
        f"| {p.level} | {p.status} | {p.latency_ms or '-'} | {p.reason or p.detail} |"
        for p in health.probes
    )
    return (
        f"# {health.hub}: {health.verdict}\n\n{health.reason}\n\nURL: {health.url or '-'}\n\n"
        f"| level | result | latency ms | detail |\n|---|---|---|---|\n{rows}\n"
    )
