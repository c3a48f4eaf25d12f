"""`hubfleet status`: the operating picture in one screen, read from the Prefect server.

Each hub with its last shallow and deep verdict (the sweeps' own tables), the runs in
progress, the next scheduled runs (operation, target, when), and the workers of each work
pool with their last heartbeat. Read-only: it starts no run and changes nothing.
"""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

UPCOMING = 10


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = int((now - when).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    text = (
        f"{seconds}s"
        if seconds < 120
        else f"{seconds // 60}m"
        if seconds < 7200
        else f"{seconds // 3600}h"
        if seconds < 172_800
        else f"{seconds // 86_400}d"
    )
    return f"in {text}" if future else f"{text} ago"


def _target(run: Any) -> str:
    hubs = [t.removeprefix("hub:") for t in run.tags if t.startswith("hub:")]
    if hubs:
        return ", ".join(hubs)
    params = run.parameters or {}
    if params.get("cluster") and params.get("hub"):
        return f"{params['cluster']}/{params['hub']}"
    return str(params.get("selection") or params.get("scope") or params.get("cluster") or "fleet")


async def gather(hubs: list[str], limit: int = UPCOMING) -> dict[str, Any]:
    """Everything the status screen shows, read from the server in a few calls."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.check_fleet_health import last_sweep_rows

    def in_state(*types: StateType) -> FlowRunFilter:
        return FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))
        )

    shallow, deep = await asyncio.gather(
        last_sweep_rows("shallow", hubs), last_sweep_rows("deep", hubs)
    )
    async with get_client() as client:
        running = await client.read_flow_runs(
            flow_run_filter=in_state(StateType.RUNNING, StateType.PENDING, StateType.CANCELLING),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
        upcoming = await client.read_flow_runs(
            flow_run_filter=in_state(StateType.SCHEDULED),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=limit,
        )
        deployments = {d.id: d for d in await client.read_deployments(limit=200)}
        pools = await client.read_work_pools(limit=50)
        workers = {
            pool.name: await client.read_workers_for_work_pool(pool.name, limit=50)
            for pool in pools
        }
    return {
        "schedules": await _schedules(deployments),
        "verdicts": {"shallow": shallow, "deep": deep},
        "running": running,
        "upcoming": upcoming,
        "deployments": deployments,
        "workers": workers,
    }


async def _schedules(deployments: dict[Any, Any]) -> list[tuple[str, str, datetime | None]]:
    """(operation, schedule, next time) of every active deployment schedule, soonest first.

    Computed from the schedule itself (Prefect's own date logic), so it is right at once
    after `hubfleet setup`, before the server's scheduler has created the runs.
    """
    from prefect.server.schemas import schedules as server_schedules

    found: list[tuple[str, str, datetime | None]] = []
    for deployment in deployments.values():
        for entry in deployment.schedules or []:
            if not entry.active:
                continue
            kind = getattr(server_schedules, type(entry.schedule).__name__, None)
            when = None
            if kind is not None:
                dates = await kind.model_validate(entry.schedule.model_dump()).get_dates(n=1)
                when = dates[0] if dates else None
            what = getattr(entry.schedule, "cron", None) or str(entry.schedule)
            found.append((_deployment_name(deployment), what, when))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda row: row[2] or far)


def _deployment_name(deployment: Any) -> str:
    op = next((t.removeprefix("op:") for t in deployment.tags if t.startswith("op:")), "?")
    return f"{op}/{deployment.name}"


def _operation(run: Any, deployments: dict[Any, Any]) -> str:
    deployment = deployments.get(run.deployment_id)
    return run.name if deployment is None else _deployment_name(deployment)


def render(picture: dict[str, Any], hubs: list[str], now: datetime) -> list[Any]:
    """The status screen as rich renderables (tables)."""
    from rich.table import Table

    verdicts = Table(title="hubs (last sweep verdicts)")
    for column in ("hub", "shallow", "deep", "unhealthy since"):
        verdicts.add_column(column)
    for hub in hubs:
        cells = []
        since = None
        for depth in ("shallow", "deep"):
            row = picture["verdicts"][depth].get(hub)
            if row is None:
                cells.append("never checked")
                continue
            healthy = row["verdict"] == "healthy"
            cells.append(row["verdict"] if healthy else f"{row['verdict']} at {row['level']}")
            if row.get("since") and since is None and not healthy:
                since = datetime.fromisoformat(row["since"])
        verdicts.add_row(hub, *cells, _ago(since, now) if since else "-")

    running = Table(title="runs in progress")
    for column in ("run", "target", "state", "started", "operator"):
        running.add_column(column)
    for run in picture["running"]:
        who = next(
            (t.removeprefix("operator:") for t in run.tags if t.startswith("operator:")), "-"
        )
        running.add_row(
            run.name, _target(run), run.state.name if run.state else "-",
            _ago(run.start_time, now), who,
        )  # fmt: skip

    upcoming = Table(title="next scheduled runs")
    for column in ("operation", "target", "when"):
        upcoming.add_column(column)
    for run in picture["upcoming"]:
        upcoming.add_row(
            _operation(run, picture["deployments"]),
            _target(run),
            f"{run.expected_start_time:%Y-%m-%d %H:%M} UTC ({_ago(run.expected_start_time, now)})"
            if run.expected_start_time
            else "-",
        )

    schedules = Table(title="schedules (hubfleet setup, from fleet.yaml)")
    for column in ("operation", "schedule", "next run"):
        schedules.add_column(column)
    for name, what, when in picture["schedules"]:
        schedules.add_row(
            name, what, f"{when:%Y-%m-%d %H:%M} UTC ({_ago(when, now)})" if when else "-"
        )

    workers = Table(title="workers")
    for column in ("pool", "worker", "status", "last heartbeat"):
        workers.add_column(column)
    for pool, members in picture["workers"].items():
        if not members:
            workers.add_row(pool, "(none: start one with `hubfleet worker`)", "-", "-")
        for worker in members:
            status = getattr(worker, "status", None)
            workers.add_row(
                pool,
                worker.name,
                str(getattr(status, "value", status) or "-"),
                _ago(worker.last_heartbeat_time, now),
            )
    return [
        schedules if picture["schedules"] else "schedules: none (run `hubfleet setup`)",
        verdicts,
        running if picture["running"] else "runs in progress: none",
        upcoming if picture["upcoming"] else "next scheduled runs: none (see `hubfleet setup`)",
        workers,
    ]


def register(app: typer.Typer) -> None:
    """Add `status` to the hubfleet CLI."""
    from hubfleet.cli.common import FleetOpt, out, use_fleet

    @app.command()
    def status(
        upcoming: Annotated[
            int, typer.Option(min=1, max=200, help="How many scheduled runs to list.")
        ] = UPCOMING,
        fleet: FleetOpt = None,
    ) -> None:
        """The operating picture: each hub's last verdicts, runs in progress, the next
        scheduled runs and the workers (read-only)."""
        from hubfleet.loader import load_fleet
        from hubfleet.server import connect

        root = use_fleet(fleet)
        model = load_fleet(root)
        hubs = [f"{c.name}/{h.name}" for c in model.clusters for h in c.hubs]
        out.print(f"Prefect API: {connect()}")
        picture = asyncio.run(gather(hubs, upcoming))
        for table in render(picture, hubs, datetime.now(UTC)):
            out.print(table)
