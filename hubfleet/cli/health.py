"""`hubfleet health`: check one hub now, or show recent verdicts from the run history.

    hubfleet health                       every hub's verdicts of the last 7 days
    hubfleet health local/prod --since 1d one hub (or `local` for a cluster)
    hubfleet health local prod [--depth deep]   check it now; exit 1 unless healthy

The history comes from the table artifacts that checks and sweeps record (one row per hub
per check), so "since when is it broken" has an answer without any other store.
"""

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from hubfleet.audit import parse_duration
from hubfleet.errors import HubfleetError
from hubfleet.health import Verdict


def register(app: typer.Typer) -> None:
    """Add the `health` command to the hubfleet CLI."""
    from hubfleet.cli.common import FleetOpt, OperatorOpt, out, run_flow, use_fleet

    @app.command()
    def health(
        target: Annotated[
            str | None,
            typer.Argument(help="CLUSTER, CLUSTER/HUB, or CLUSTER followed by HUB (all hubs)."),
        ] = None,
        hub: Annotated[str | None, typer.Argument(help="With CLUSTER: check this hub now.")] = None,
        since: Annotated[
            str, typer.Option(help="How far back the history goes: 30m, 12h, 7d, 2w.")
        ] = "7d",
        depth: Annotated[
            str, typer.Option(help="For a check now: shallow, deep, or a level name.")
        ] = "shallow",
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Check a hub now (CLUSTER HUB; exit 1 unless healthy), or show recent verdicts."""
        use_fleet(fleet)
        if hub is not None:
            from flows.check_hub_health import check_hub_health

            if target is None or "/" in target:
                raise HubfleetError("give the hub as CLUSTER HUB, or CLUSTER/HUB alone")
            report = run_flow(
                check_hub_health, cluster=target, hub=hub, depth=depth, operator=operator
            )
            out.print(f"{report.hub}: {report.verdict} ({report.reason})")
            if report.verdict is not Verdict.healthy:
                raise typer.Exit(1)
            return

        window = parse_duration(since)
        _check_target(target)
        _ensure_api()
        rows = asyncio.run(read_history(target, datetime.now(UTC) - window))
        if not rows:
            out.print(f"no health checks of {target or 'any hub'} in the last {since}")
            return
        out.print(history_table(rows, since))
        for line in since_lines(rows):
            out.print(line)


def _check_target(target: str | None) -> None:
    """A typo in the target must not print an empty history: check it against the fleet."""
    if not target:
        return
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir

    fleet = load_fleet(fleet_dir())
    cluster, _, hub = target.partition("/")
    found = fleet.cluster(cluster)  # LookupError names the known clusters
    if hub:
        found.hub(hub)


def _ensure_api() -> None:
    from hubfleet.server import connect

    connect()


async def read_history(target: str | None, since: datetime) -> list[dict[str, Any]]:
    """Rows of every check of `target` (a cluster, cluster/hub, or all) since `since`.

    Newest first. A hub checked by a deep sweep appears in the sweep's table and its own
    subflow's table: the same run, shown once.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    wanted = _matcher(target)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(like_="health-"),
                    type=ArtifactFilterType(any_=["table"]),
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=200,
                offset=offset,
            )
            for artifact in page:
                created = artifact.created
                if created is not None and created < since:
                    return sorted(rows.values(), key=lambda r: r["checked_at"], reverse=True)
                key = artifact.key or ""
                if not key.startswith(("health-sweep-", "health-history-")):
                    continue
                for row in _rows(artifact.data):
                    if not wanted(row.get("hub", "")):
                        continue
                    if not row.get("checked_at") and created is not None:
                        row["checked_at"] = created.isoformat(timespec="seconds")
                    ident = (row["hub"], row.get("run") or key + str(artifact.id))
                    # A sweep's row knows the streak; prefer it over the subflow's own.
                    if ident not in rows or "failures" in row:
                        rows[ident] = row
            if len(page) < 200:
                break
            offset += len(page)
    return sorted(rows.values(), key=lambda r: r["checked_at"], reverse=True)


def _rows(data: Any) -> list[dict[str, Any]]:
    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return []
    return [r for r in rows or [] if isinstance(r, dict) and "hub" in r and "verdict" in r]


def _matcher(target: str | None) -> Any:
    if not target:
        return lambda hub: True
    if "/" in target:
        return lambda hub: hub == target
    return lambda hub: hub.split("/", 1)[0] == target


def history_table(rows: list[dict[str, Any]], since: str) -> Table:
    """Newest first: when, hub, depth, verdict, failing level and reason."""
    table = Table(title=f"health checks, last {since}")
    for column in ("checked at (UTC)", "hub", "depth", "verdict", "level", "reason"):
        table.add_column(column)
    colours = {"healthy": "green", "degraded": "yellow", "down": "red"}
    for row in rows:
        verdict = row["verdict"]
        table.add_row(
            row["checked_at"].replace("T", " ").replace("+00:00", ""),
            row["hub"],
            row.get("depth", ""),
            f"[{colours.get(verdict, 'white')}]{verdict}[/]",
            row.get("level", "") or "",
            row.get("reason", "") or "",
        )
    return table


def since_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Per hub: its current verdict and since when (the oldest check of the current run)."""
    by_hub: dict[str, list[dict[str, Any]]] = {}
    for row in rows:  # newest first
        by_hub.setdefault(row["hub"], []).append(row)
    lines = []
    for hub, checks in sorted(by_hub.items()):
        current = checks[0]["verdict"]
        run = [c for c in _takewhile_same(checks, current)]
        start = run[-1]["checked_at"].replace("T", " ").replace("+00:00", "")
        full = len(run) == len(checks)
        lines.append(
            f"{hub}: {current} since {'at least ' if full else ''}{start} UTC ({len(run)} check(s))"
        )
    return lines


def _takewhile_same(checks: list[dict[str, Any]], verdict: str) -> list[dict[str, Any]]:
    run = []
    for check in checks:
        if check["verdict"] != verdict:
            break
        run.append(check)
    return run
