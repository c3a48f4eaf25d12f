"""Operating hubfleet on a Prefect server: `setup`, `worker`, `audit` and `server`.

Prefect is imported inside the commands, so `hubfleet validate` stays fast.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from hubfleet.cli.common import api_url, out
from hubfleet.errors import HubfleetError
from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir

PoolOpt = Annotated[
    str,
    typer.Option(
        "--pool",
        help="Name of the work pool: a process pool (created if missing), or an existing "
        "kubernetes pool whose Jobs run a worker image.",
    ),
]
FleetOpt = Annotated[
    Path | None,
    typer.Option("--fleet", help="Fleet directory (default: $HUBFLEET_FLEET or ./fleet)."),
]


def setup(
    fleet: FleetOpt = None,
    pool: PoolOpt = "hubfleet",
    heartbeat: Annotated[
        int, typer.Option(help="Seconds between flow-run heartbeats of worker runs (>= 30).")
    ] = 30,
    zombie_after: Annotated[
        int, typer.Option(help="Seconds without a heartbeat before a run is marked Crashed.")
    ] = 90,
) -> None:
    """Register blocks, the work pool, concurrency limits, deployments and automations.

    Idempotent: run it again after changing the fleet (new hubs, schedules); what did not
    change is left alone. Notification blocks named in fleet.yaml `notify` are used as they
    are, or created from HUBFLEET_NOTIFY_URL_<NAME> (a webhook URL) when set.
    """
    from prefect.client.orchestration import get_client

    from deployments.setup import setup as run_setup

    root = fleet or fleet_dir()
    model = load_fleet(root)
    os.environ["HUBFLEET_FLEET"] = str(root)
    api_url()

    async def go() -> Any:
        async with get_client() as client:
            return await run_setup(
                client,
                model,
                pool=pool,
                heartbeat_seconds=heartbeat,
                zombie_after=timedelta(seconds=zombie_after),
            )

    report = asyncio.run(go())
    for outcome in ("created", "updated"):
        for what in getattr(report, outcome):
            out.print(f"{outcome}: {what}")
    for warning in report.warnings:
        out.print(f"warning: {warning}")
    out.print(f"setup of {model.settings.name}: {report.summary()}")


WorkerPoolOpt = Annotated[
    str,
    typer.Option(
        "--pool",
        help="Name of the process work pool (a kubernetes pool is served by `prefect "
        "worker start --type kubernetes` in its cluster: see the README).",
    ),
]


def worker(
    pool: WorkerPoolOpt = "hubfleet",
    name: Annotated[str | None, typer.Option(help="Worker name (default: Prefect's).")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Most runs this worker executes at once.")
    ] = None,
    heartbeat: Annotated[
        int, typer.Option(help="Seconds between flow-run heartbeats (>= 30).")
    ] = 30,
) -> None:
    """Start a Prefect worker for the pool (foreground). Run several to scale out.

    Each worker polls the server for scheduled runs of the pool and runs each in its own
    process; any number of workers, on any machine that reaches the API, can serve a pool.
    """
    if heartbeat < 30:
        raise HubfleetError(f"--heartbeat {heartbeat}: Prefect's minimum is 30 seconds")
    api_url()  # sets the URL and credential in os.environ, which the worker inherits
    env = {
        **os.environ,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type"]
    args += ["process"]
    if name:
        args += ["--name", name]
    if limit:
        args += ["--limit", str(limit)]
    sys.stdout.flush()
    # exec: the worker keeps this PID, so whoever started `hubfleet worker` can stop it.
    os.execve(sys.executable, args, env)


def audit(
    hub: Annotated[
        str | None, typer.Option(help="CLUSTER/HUB, or a hub name unique in the fleet.")
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="Only runs on this cluster.")] = None,
    op: Annotated[str | None, typer.Option(help="Only this operation, e.g. deploy_hub.")] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only runs that ended so (completed, failed, crashed, ...)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only runs from this long ago: 30d, 12h, 90m, 2w.")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    limit: Annotated[int | None, typer.Option(help="At most this many runs (newest).")] = None,
    source: Annotated[
        str,
        typer.Option(
            help="Where to read the run history: api (any server), database (PostgreSQL: "
            "`hubfleet server --postgres` or $HUBFLEET_AUDIT_DATABASE; fastest), or auto "
            "(database when there is one, else api)."
        ),
    ] = "auto",
    fleet: FleetOpt = None,
) -> None:
    """What was done to a hub, by whom, when, with what result (the Prefect run history)."""
    from rich.table import Table

    from deployments.audit_log import read_audit
    from hubfleet import audit as audit_mod

    if format not in audit_mod.FORMATS:
        raise audit_mod.AuditInputError(
            f"--format {format!r}: allowed: {', '.join(audit_mod.FORMATS)}"
        )
    root = fleet or fleet_dir()
    model = load_fleet(root) if (hub and "/" not in hub and not cluster) else None
    query = audit_mod.build_query(model, hub=hub, cluster=cluster, op=op, states=state, since=since)
    url = api_url()
    ui_url = os.environ.get("PREFECT_UI_URL") or audit_mod.ui_base_url(url)
    rows, used = read_audit(url, query, ui_url, limit, source)
    if format == "json":
        sys.stdout.write(audit_mod.to_json(rows) + "\n")
        return
    if format == "csv":
        sys.stdout.write(audit_mod.to_csv(rows))
        return
    table = Table(title=f"audit: {len(rows)} run(s)", caption=f"read from the {used}")
    for column in ("started (UTC)", "op", "target", "operator", "outcome", "revision", "run"):
        table.add_column(column)
    colours = {"Completed": "green", "Failed": "red", "Crashed": "red"}
    for row in rows:
        colour = colours.get(row.outcome, "yellow")
        table.add_row(
            row.started,
            row.op,
            row.target,
            row.operator,
            f"[{colour}]{row.outcome}[/]",
            row.revision,
            f"[link={row.url}]{row.url}[/link]",
        )
    out.print(table)


def server(
    postgres: Annotated[
        bool, typer.Option("--postgres", help="Store runs in PostgreSQL (scale-out).")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(help="Port of the API and UI (default: the one it last ran on, else 4200)."),
    ] = None,
    down: Annotated[bool, typer.Option("--down", help="Stop the server (and PostgreSQL).")] = False,
) -> None:
    """Run the Prefect server in the background: SQLite (default) or PostgreSQL.

    Switch to --postgres when several workers or machines share one server, or the run
    history grows past tens of thousands of runs; SQLite serialises writes.
    """
    from hubfleet.paths import data_dir
    from hubfleet.server import PrefectServer, postgres_stack

    if not postgres:
        sqlite = PrefectServer(data_dir() / "prefect", port=port)
        if down:
            out.print(f"stopped pid {sqlite.stop()}")
            return
        reused = sqlite.ensure()
        out.print(f"Prefect server ({'reused' if reused else 'started'}, SQLite): {sqlite.ui_url}")
        out.print(f"Credential (UI login and PREFECT_API_AUTH_STRING): {sqlite.auth_file}")
        return
    pg, prefect = postgres_stack(data_dir(), port)
    if down:
        out.print(f"stopped Prefect server pid {prefect.stop()}, PostgreSQL pid {pg.stop()}")
        return
    pg.ensure()
    reused = prefect.ensure()
    pg.ensure_audit_index()  # after the server created its tables
    out.print(
        f"Prefect server ({'reused' if reused else 'started'}, PostgreSQL in {pg.home}): "
        f"{prefect.ui_url}\nexport PREFECT_API_URL={prefect.api_url}\n"
        f"Credential (UI login and PREFECT_API_AUTH_STRING): {prefect.auth_file}"
    )


def register(app: typer.Typer) -> None:
    """Add the ops commands to the `hubfleet` CLI."""
    app.command()(setup)
    app.command()(worker)
    app.command()(audit)
    app.command()(server)
