"""check_hub_health: is the hub up, does its API answer, is hubfleet's ops token accepted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.hub_token import HubOpsToken
from flows.operation import begin
from hubfleet.health import HealthReport, Level, ProbeResult, judge
from hubfleet.model import Provider
from tasks import jupyterhub_api as api
from tasks.hub_credentials import load_ops_token
from tasks.local_hub import local_hub
from tasks.retry import transient_retries


@task(
    task_run_name="probe-reachable-{url}",
    **transient_retries(retries=3, backoff=0.5),
    cache_policy=NO_CACHE,
)
async def probe_reachable(url: str) -> float:
    """GET /hub/health (read-only). Transient failures are retried with backoff."""
    return await asyncio.to_thread(api.timed_health, url)


@task(
    task_run_name="probe-api-{url}",
    **transient_retries(retries=2, backoff=0.5),
    cache_policy=NO_CACHE,
)
async def probe_api(url: str) -> str:
    """GET /hub/api: the hub's version (read-only)."""
    return await asyncio.to_thread(api.version, url)


@task(
    task_run_name="probe-auth-{url}",
    **transient_retries(retries=2, backoff=0.5),
    cache_policy=NO_CACHE,
)
async def probe_auth(url: str, block: HubOpsToken | None) -> str:
    """GET /hub/api/user with the ops token (read-only): who the token belongs to."""
    if block is None:
        raise api.TokenRefused("no ops token stored for this hub; deploy it to create one")
    me = await asyncio.to_thread(api.whoami, url, block.token.get_secret_value())
    return str(me.get("name"))


async def _probe(level: Level, call: Coroutine[Any, Any, Any]) -> ProbeResult:
    """Run a probe task; its final failure (after retries) becomes a failed result."""
    start = time.perf_counter()
    try:
        value = await call
    except Exception as exc:
        latency = round((time.perf_counter() - start) * 1000, 1)
        return ProbeResult(level, False, latency, reason=str(exc))
    latency = round((time.perf_counter() - start) * 1000, 1)
    if level is Level.reachable:
        return ProbeResult(level, True, round(value, 1))
    return ProbeResult(level, True, latency, detail=str(value))


def hub_url(op: Any) -> str | None:
    """Where the hub answers: the local process's port, or https://<domain>."""
    if op.cluster.provider is Provider.local:
        state = local_hub(op.fleet, op.cluster.name, op.hub.name).state()
        return state.url if state else None
    return f"https://{op.hub.domain}"


@flow(name="check_hub_health", flow_run_name="check_hub_health {cluster}/{hub}")
async def check_hub_health(cluster: str, hub: str, operator: str | None = None) -> dict[str, Any]:
    """Probe one hub level by level and give a verdict: healthy, degraded or down."""
    op = await begin("check_hub_health", cluster, hub, operator)
    url = hub_url(op)
    if url is None:
        probes = [ProbeResult(Level.reachable, False, None, "never deployed (no local state)")]
    else:
        probes = [await _probe(Level.reachable, probe_reachable(url))]
        if probes[-1].ok:
            probes.append(await _probe(Level.api, probe_api(url)))
        if probes[-1].ok:
            block = await load_ops_token(cluster, hub)
            probes.append(await _probe(Level.auth, probe_auth(url, block)))
    report = judge(op.target, probes)
    await acreate_markdown_artifact(
        key=f"health-{cluster}-{hub}",
        markdown=_markdown(report, url),
        description=f"Health of {op.target}: {report.verdict}",
    )
    return report_dict(report, url)


def report_dict(report: HealthReport, url: str | None) -> dict[str, Any]:
    return {
        "hub": report.hub,
        "url": url,
        "verdict": report.verdict.value,
        "reason": report.reason,
        "latency_ms": report.latency_ms,
        "probes": [
            {
                "level": p.level.value,
                "ok": p.ok,
                "latency_ms": p.latency_ms,
                "reason": p.reason,
                "detail": p.detail,
            }
            for p in report.probes
        ],
    }


def _markdown(report: HealthReport, url: str | None) -> str:
    rows = "\n".join(
        f"| {p.level} | {'ok' if p.ok else 'FAIL'} | {p.latency_ms or '-'} | "
        f"{p.reason or p.detail} |"
        for p in report.probes
    )
    return (
        f"# {report.hub}: {report.verdict}\n\n{report.reason}\n\nURL: {url or '-'}\n\n"
        f"| level | result | latency ms | detail |\n|---|---|---|---|\n{rows}\n"
    )
