"""check_fleet_health: probe every selected hub, remember streaks, alert once per outage.

The runbook:
  1. pick the hubs (`selection`: cluster or cluster/hub names; all by default);
  2. probe them with bounded concurrency per cluster: a shallow sweep probes many hubs
     in one task per cluster (Prefect records ~50 task runs/s, so not one per hub); a
     deep sweep runs `check_hub_health` per hub, each a subflow in the run history;
  3. count each hub's consecutive failed sweeps, carried over from the last sweep's table;
  4. emit `hubfleet.hub.unhealthy` once, when a hub's streak reaches `alert_after` (an
     automation turns it into a notification), and `hubfleet.hub.recovered` after it;
  5. record a table (hub x level, latency) and a summary: what is wrong, what changed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Collection
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.events import emit_event

from blocks.hub_token import HubOpsToken
from flows.check_hub_health import check_hub_health, history_row, hub_url, report_dict
from flows.operation import FleetOperation, begin_fleet, current_fleet
from flows.parameters import (
    AlertAfter,
    Backoff,
    PerCluster,
    ProbeTimeout,
    Retries,
    Selection,
    SweepDeadline,
)
from hubfleet.errors import HubfleetError
from hubfleet.health import (
    DEPTHS,
    Level,
    ProbeResult,
    Streak,
    changes,
    judge,
    levels_for,
    next_streak,
)
from hubfleet.model import Fleet
from hubfleet.plan import select
from hubfleet.results import HealthSweep
from tasks import probes

UNHEALTHY_EVENT = "hubfleet.hub.unhealthy"
RECOVERED_EVENT = "hubfleet.hub.recovered"
_SHALLOW_LEVELS = set(DEPTHS["shallow"])


class SweepTimedOut(HubfleetError):
    """A sweep's wait outlasted its deadline: the run fails, saying what it waited for."""


T = TypeVar("T")


async def within(deadline_at: float, what: str, step: Awaitable[T]) -> T:
    """Await `step` until `deadline_at` (epoch seconds); past it, fail naming `what`.

    Every wait of a sweep goes through here: the Prefect API's answers (a busy SQLite
    server answers 503 and its client backs off for up to a minute a call) and the hubs'.
    """
    left = deadline_at - time.time()
    try:
        async with asyncio.timeout(max(left, 0.0)):
            return await step
    except TimeoutError:
        raise SweepTimedOut(
            f"check_fleet_health: {what} did not finish by the sweep's deadline "
            f"({time.strftime('%H:%M:%S', time.gmtime(deadline_at))} UTC). The run fails "
            "rather than wait: check the Prefect server (`hubfleet server status`; a busy "
            "SQLite database answers 503) and the hubs, or raise `deadline`."
        ) from None


@flow(name="check_fleet_health", flow_run_name="check_fleet_health {depth}")
async def check_fleet_health(
    depth: str = "shallow",
    selection: Selection = None,
    per_cluster: PerCluster = None,
    alert_after: AlertAfter = 3,
    retries: Retries | None = None,
    backoff: Backoff | None = None,
    timeout: ProbeTimeout = 5.0,
    deadline: SweepDeadline = 7200.0,
    operator: str | None = None,
) -> HealthSweep:
    """Sweep the fleet's hubs up to `depth`; alert once a hub fails `alert_after` sweeps in a row.

    per_cluster: hubs probed at once per cluster (default 50 shallow, the fleet's
    `parallelism` deep). timeout applies to each shallow request; each level is retried
    by the probes' one policy (`hubfleet.health.RETRY`) unless retries/backoff override it.
    deadline: seconds the whole sweep may take; past it the run fails, naming what it was
    waiting for (a nightly sweep that never ends would never alert).
    """
    deadline_at = time.time() + deadline
    levels = levels_for(depth)
    if alert_after < 1:
        raise HubfleetError(f"alert_after={alert_after}: use 1 or more")
    op = await begin_sweep(depth, selection, operator)
    fleet, targets = op.fleet, select(op.fleet, selection)
    limit = per_cluster or (50 if set(levels) <= _SHALLOW_LEVELS else fleet.settings.parallelism)

    previous = await within(
        deadline_at,
        "reading the earlier sweeps' rows from the Prefect API",
        last_sweep_rows(depth, [f"{c}/{h}" for c, h in targets]),
    )
    if set(levels) <= _SHALLOW_LEVELS:
        probing = sweep_shallow(
            fleet, targets, levels, limit, retries, backoff, timeout, deadline_at
        )
    else:
        probing = sweep_deep(targets, depth, limit, op.operator)
    clusters = len({c for c, _ in targets})
    results = await within(
        deadline_at, f"probing {len(targets)} hub(s) on {clusters} cluster(s)", probing
    )

    rows, alerts, recovered = apply_streaks(results, previous, alert_after)
    announce(alerts, recovered, depth)
    summary = await within(
        deadline_at,
        "recording the sweep's table and summary in the Prefect API",
        record_sweep(depth, rows, previous, alerts, recovered),
    )
    if any("servers" in r for r in results):
        from tasks.usage import record_usage_samples

        await within(
            deadline_at,
            "recording the usage samples in the Prefect API",
            record_usage_samples(results),
        )
    get_run_logger().info(
        "%s sweep of %d hubs: %s; %d alert(s), %d recovered",
        depth,
        len(rows),
        ", ".join(f"{n} {v}" for v, n in summary.counts.items()) or "nothing",
        len(alerts),
        len(recovered),
    )
    return summary


async def begin_sweep(
    depth: str, selection: list[str] | None, operator: str | None
) -> FleetOperation:
    """Tag the run like every fleet-wide operation (a `cluster:` tag per swept cluster), plus
    `depth:<depth>`, which the report and `hubfleet health` read."""
    fleet = current_fleet()
    targets = select(fleet, selection)
    clusters = sorted({c for c, _ in targets})
    depth_tag = (f"depth:{depth}",)
    op = await begin_fleet("check_fleet_health", operator, clusters, depth_tag, fleet=fleet)
    get_run_logger().info("check_fleet_health (%s) of %d hubs", depth, len(targets))
    return op


# --- shallow: many hubs per task --------------------------------------------------------


async def sweep_shallow(
    fleet: Fleet,
    targets: list[tuple[str, str]],
    levels: tuple[Level, ...],
    limit: int,
    retries: int | None,
    backoff: float | None,
    timeout: float,
    deadline_at: float,
) -> list[dict[str, Any]]:
    """One task per cluster, clusters in parallel."""
    by_cluster: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for cluster, hub in targets:
        op = _HubRef(fleet, cluster, hub)
        by_cluster[cluster].append((f"{cluster}/{hub}", hub_url(op)))
    depth = next((d for d, lv in DEPTHS.items() if lv == levels), levels[-1].value)
    batches = await asyncio.gather(
        *(
            probe_hubs(cluster, hubs, levels, depth, limit, retries, backoff, timeout, deadline_at)
            for cluster, hubs in by_cluster.items()
        )
    )
    return [result for batch in batches for result in batch]


class _HubRef:
    """What `hub_url` needs to know about a hub."""

    def __init__(self, fleet: Fleet, cluster: str, hub: str):
        self.fleet = fleet
        self.cluster = fleet.cluster(cluster)
        self.hub = self.cluster.hub(hub)


@task(task_run_name="probe-hubs-{cluster}", cache_policy=NO_CACHE)
async def probe_hubs(
    cluster: str,
    hubs: list[tuple[str, str | None]],
    levels: tuple[Level, ...],
    depth: str,
    limit: int,
    retries: int | None,
    backoff: float | None,
    timeout: float,
    deadline_at: float,
) -> list[dict[str, Any]]:
    """Probe the cluster's hubs (read-only), at most `limit` at once; one result per hub.

    Ops tokens are read in one call for all hubs, inside this task: never a parameter.
    """
    tokens = (
        await within(
            deadline_at,
            "reading the stored ops tokens from the Prefect API",
            load_ops_tokens([hub for hub, _ in hubs]),
        )
        if Level.auth in levels
        else {}
    )
    gate = asyncio.Semaphore(limit)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(hub: str, url: str | None) -> dict[str, Any]:
            if url is None:
                found = [
                    ProbeResult(Level.reachable, False, None, "never deployed (no local state)")
                ]
                return report_dict(judge(hub, found), url, depth)
            # The usage sample too is inside the gate: outside it, every probed hub's
            # sample queued in the client's pool at once (thousands at 10,000 hubs), and
            # the pool's scheduling, linear in its queue per event, made the sweep 4x the
            # bare probe at 2,000 hubs and not finish in 10 minutes at 10,000.
            async with gate:
                found = await probes.probe_shallow(
                    client,
                    url,
                    tokens.get(hub),
                    levels,
                    retries=retries,
                    backoff=backoff,
                    timeout=timeout,
                )
                result = report_dict(judge(hub, found), url, depth)
                if found and found[-1].level is Level.auth and found[-1].ok:
                    await sample_usage(client, hub, url, tokens[hub], timeout, result)
            return result

        return list(await asyncio.gather(*(one(hub, url) for hub, url in hubs)))


async def sample_usage(
    client: httpx.AsyncClient,
    hub: str,
    url: str,
    token: str,
    timeout: float,
    result: dict[str, Any],
) -> None:
    """Add the hub's running servers to its result (`servers`, `sampled_at`), for
    `hubfleet usage` (tasks/usage.py). A failed sample is logged and left out: it never
    changes the hub's verdict."""
    from tasks.usage import running_servers

    at = datetime.now(UTC).isoformat()  # before the call: each server listed ran at `at`
    try:
        result["servers"] = await running_servers(client, url, token, timeout)
        result["sampled_at"] = at
    except Exception as exc:
        get_run_logger().warning("%s: usage sample failed: %s", hub, exc)


#: Block documents read per API call (the server's default page limit).
TOKEN_PAGE = 200


async def load_ops_tokens(hubs: Collection[str]) -> dict[str, str]:
    """The stored ops tokens of `hubs` ('cluster/hub'), by hub: one API call per 200 hubs.

    Each call asks for one page of blocks by name (`POST /block_documents/filter`). Not the
    by-type endpoint (`/block_types/slug/.../block_documents`): it ignores limit and
    offset, and the server builds its answer in time quadratic in the number of blocks
    (Prefect 3.9's read_block_documents matches every block against every other): with
    10,000 hubs one read took minutes and was the whole of a shallow sweep's time.
    A block is kept only if its own `hub` field is the hub asked for (block names join
    cluster and hub with '-', which two hubs could share).
    """
    wanted = {HubOpsToken.block_name(*hub.split("/", 1)): hub for hub in hubs}
    names = sorted(wanted)
    tokens: dict[str, str] = {}
    async with get_client() as client:
        for first in range(0, len(names), TOKEN_PAGE):
            page = names[first : first + TOKEN_PAGE]
            response = await client.request(
                "POST",
                "/block_documents/filter",
                json={
                    "block_documents": {"name": {"any_": page}},
                    "block_types": {"slug": {"any_": [HubOpsToken.get_block_type_slug()]}},
                    "include_secrets": True,
                    "limit": TOKEN_PAGE,
                },
            )
            for doc in response.json():
                data = doc.get("data") or {}
                token = data.get("token")
                if token and data.get("hub") == wanted.get(doc.get("name")):
                    tokens[str(data["hub"])] = str(token)
    return tokens


# --- deep: one subflow per hub, bounded per cluster -------------------------------------


async def sweep_deep(
    targets: list[tuple[str, str]], depth: str, limit: int, operator: str
) -> list[dict[str, Any]]:
    """`check_hub_health` per hub, at most `limit` hubs of one cluster at once."""
    gates: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(limit))

    async def one(cluster: str, hub: str) -> dict[str, Any]:
        async with gates[cluster]:
            try:
                health = await check_hub_health(cluster, hub, depth=depth, operator=operator)
                return health.as_data()
            except Exception as exc:  # the check itself broke: that hub is down, not the sweep
                failed = ProbeResult(Level.reachable, False, None, f"check failed: {exc}")
                return report_dict(judge(f"{cluster}/{hub}", [failed]), None, depth)

    return list(await asyncio.gather(*(one(c, h) for c, h in targets)))


# --- streaks, alerts, records -----------------------------------------------------------


#: How many earlier sweeps of a depth are read to find a hub's last row: a hub left out of
#: that many selective sweeps in a row starts a new streak.
STREAK_LOOKBACK = 20


async def last_sweep_rows(depth: str, hubs: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each of `hubs`' newest row in the earlier sweeps of this depth (empty at first).

    Not only the last sweep's: a sweep of a selection leaves the other hubs out of its
    table, and their streaks (failures, alerted) must survive it, or an alerted hub would
    alert again and its recovery go unannounced. Newest sweep first; usually the last one
    has every hub and it is the only one read.
    """
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    wanted = set(hubs)
    found: dict[str, dict[str, Any]] = {}
    async with get_client() as client:
        for offset in range(STREAK_LOOKBACK):
            if wanted <= found.keys():
                break
            page = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[sweep_key(depth)])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
                offset=offset,
            )
            if not page:
                break
            data = page[0].data
            loaded: Any = json.loads(data) if isinstance(data, str) else data
            rows: list[dict[str, Any]] = loaded or []
            for row in rows:
                if row["hub"] in wanted:
                    found.setdefault(row["hub"], row)
    return found


def sweep_key(depth: str) -> str:
    return f"health-sweep-{depth}"


def apply_streaks(
    results: list[dict[str, Any]], previous: dict[str, dict[str, Any]], alert_after: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows with each hub's streak; the rows that alert now, and those that recovered."""
    from hubfleet.health import Verdict

    now = datetime.now(UTC)
    rows, alerts, recovered = [], [], []
    for result in results:
        prev = Streak.from_row(previous.get(result["hub"]))
        move = next_streak(prev, Verdict(result["verdict"]), now, alert_after)
        row = history_row(
            result,
            failures=move.streak.failures,
            since=move.streak.since,
            alerted=move.streak.alerted,
        )
        rows.append(row)
        if move.alert:
            alerts.append(row)
        if move.recovered:
            recovered.append(row)
    return rows, alerts, recovered


def announce(alerts: list[dict[str, Any]], recovered: list[dict[str, Any]], depth: str) -> None:
    """One event per hub that just crossed the threshold or recovered; the hub is the resource."""
    for row, event in [(r, UNHEALTHY_EVENT) for r in alerts] + [
        (r, RECOVERED_EVENT) for r in recovered
    ]:
        cluster = row["hub"].split("/", 1)[0]
        emit_event(
            event=event,
            resource={
                "prefect.resource.id": f"hubfleet.hub.{row['hub']}",
                "prefect.resource.name": row["hub"],
                "hubfleet.cluster": cluster,
            },
            payload={
                "hub": row["hub"],
                "verdict": row["verdict"],
                "level": row["level"],
                "reason": row["reason"],
                "failures": row["failures"],
                "since": row["since"],
                "depth": depth,
            },
        )


async def record_sweep(
    depth: str,
    rows: list[dict[str, Any]],
    previous: dict[str, dict[str, Any]],
    alerts: list[dict[str, Any]],
    recovered: list[dict[str, Any]],
) -> HealthSweep:
    """The sweep's table (every hub x level) and its summary; returns the summary."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["verdict"]] += 1
    unhealthy = [r for r in rows if r["verdict"] != "healthy"]
    moved = changes(previous, {r["hub"]: r for r in rows})
    await acreate_table_artifact(
        key=sweep_key(depth),
        table=rows,
        description=f"{depth} sweep: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())),
    )
    wrong = "\n".join(
        f"- **{r['hub']}** {r['verdict']} at `{r['level']}` for {r['failures']} sweep(s)"
        f" (since {r['since']}): {r['reason']}"
        for r in unhealthy
    )
    await acreate_markdown_artifact(
        key=f"health-summary-{depth}",
        markdown=(
            f"# Health sweep ({depth}): {len(rows)} hubs\n\n"
            + " · ".join(f"{n} {v}" for v, n in sorted(counts.items()))
            + f"\n\n## What is wrong\n\n{wrong or 'Nothing.'}\n\n"
            + "## What changed since the last sweep\n\n"
            + ("\n".join(f"- {line}" for line in moved) or "Nothing.")
            + "\n\n## Alerts\n\n"
            + (", ".join(r["hub"] for r in alerts) or "none")
            + " · recovered: "
            + (", ".join(r["hub"] for r in recovered) or "none")
            + "\n"
        ),
        description=f"{depth} sweep: {len(unhealthy)} unhealthy, {len(alerts)} new alert(s)",
    )
    return HealthSweep(
        depth=depth,
        hubs=len(rows),
        counts=dict(sorted(counts.items())),
        unhealthy=unhealthy,
        alerted=[r["hub"] for r in alerts],
        recovered=[r["hub"] for r in recovered],
        changes=moved,
    )
