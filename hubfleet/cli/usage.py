"""`hubfleet usage`: what each community (hub, use case) used and what it cost, estimated.

Reads the usage samples the shallow health sweeps recorded in the run history, each hub's
values (what a server requests), its storage now, and the price table (hubfleet/prices.yaml
with fleet.yaml's `prices:`). Read-only: nothing is changed anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hubfleet.cli.common import FleetOpt


def usage(
    since: Annotated[str, typer.Option(help="How far back: e.g. 30d, 12h, 2w.")] = "30d",
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    hub: Annotated[
        list[str] | None,
        typer.Option("--hub", help="Only these (CLUSTER or CLUSTER/HUB; repeatable)."),
    ] = None,
    storage: Annotated[
        bool,
        typer.Option(
            "--storage/--no-storage",
            help="Measure storage (homes of local hubs, PVCs of Kubernetes hubs).",
        ),
    ] = True,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    fleet: FleetOpt = None,
) -> None:
    """Per hub and per use case: active users, user-server hours, peak concurrent users,
    storage, and an estimated cost (resources requested x price table; no cloud bill).
    Hours come from the running servers each shallow health sweep samples; see README
    "Usage and cost" for how each number is computed and how to set prices."""
    import asyncio

    from hubfleet.audit import parse_since
    from hubfleet.cli.common import api_url, out
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir
    from hubfleet.plan import select
    from hubfleet.usage import FORMATS, UsageInputError, render

    if format not in FORMATS:
        raise UsageInputError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")
    start = parse_since(since)
    assert start is not None
    model = load_fleet(fleet or fleet_dir())
    wanted = {f"{c}/{h}" for c, h in select(model, hub)} if hub else None
    api_url()
    from tasks.usage import collect_usage

    result = asyncio.run(collect_usage(model, start, storage=storage, only=wanted))
    if format != "table":
        text = render(result, format)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            typer.echo(text, nl=False)
        return
    if output:
        from rich.console import Console

        with output.open("w", encoding="utf-8") as file:
            _print(Console(file=file, width=200), result)
    else:
        _print(out, result)


def _print(console: Any, result: Any) -> None:
    for table in tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


def tables(result: Any) -> list[Table]:
    """The per-use-case and per-hub tables."""
    from hubfleet.usage import money

    cur = result.currency
    span = (
        f"{result.start.isoformat(timespec='minutes')} → {result.end.isoformat(timespec='minutes')}"
    )
    cases = Table(title=f"usage and estimated cost per use case, {span}")
    for column in ("use case", "hubs", "active users", "server hours", "peak users"):
        cases.add_column(column, justify="left" if column == "use case" else "right")
    for column in ("storage GiB", "cost"):
        cases.add_column(column, justify="right")
    for case, v in [*result.use_cases.items(), ("total", result.total)]:
        cases.add_row(
            case,
            str(v["hubs"]),
            str(v["active_users"]),
            f"{v['server_hours']:.2f}",
            str(v["peak_users"]),
            _num(v["storage_gib"]),
            money(v["cost"], cur),
        )
    hubs = Table(title=f"per hub ({result.samples} sample(s) of running servers)")
    hubs.add_column("hub", no_wrap=True)
    hubs.add_column("use case", no_wrap=True)
    for column in ("users", "server h", "peak", "GiB", "server requests"):
        hubs.add_column(column, justify="right")
    hubs.add_column("machine")
    for column in ("per server-h", "cost"):
        hubs.add_column(column, justify="right", no_wrap=True)
    for name, v in result.hubs.items():
        server = (
            f"{v['server_cpu']:g} CPU, {v['server_memory_gib']:g} GiB"
            if v["server_cpu"] is not None
            else "-"
        )
        hubs.add_row(
            name,
            v["use_case"],
            str(v["active_users"]),
            f"{v['server_hours']:.2f}",
            str(v["peak_users"]),
            _num(v["storage_gib"]),
            server,
            v["machine"] or "-",
            money(v["cost_per_server_hour"], cur, 4),
            money(v["cost"], cur),
        )
    return [cases, hubs]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def register(app: typer.Typer) -> None:
    """Add `usage` to the hubfleet CLI."""
    app.command()(usage)
