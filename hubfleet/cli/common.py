"""What the command modules share: the consoles, the common options, and how a command
runs a flow. A command module imports these from here, never from another command module."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir

# Wide enough for URLs when piped (CI logs, tests); a terminal's own width otherwise.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)

FleetOpt = Annotated[
    Path | None,
    typer.Option("--fleet", help="Fleet directory (default: $HUBFLEET_FLEET or ./fleet)."),
]


def _operator(value: str | None) -> str | None:
    from hubfleet.audit import check_operator

    return None if value is None else check_operator(value)


OperatorOpt = Annotated[
    str | None,
    typer.Option(
        help="Who is running this, for the audit log (default: $USER); a plain name, "
        "not 'schedule' or 'unknown(ui/api)'.",
        callback=_operator,
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
]
LockWaitOpt = Annotated[
    float | None,
    typer.Option(
        "--lock-wait",
        min=1,
        max=86_400,
        help="Seconds to wait while another run changes this hub (default 1800); then stop "
        "with the name of the run holding it.",
    ),
]


def use_fleet(path: Path | None) -> Path:
    root = path or fleet_dir()
    os.environ["HUBFLEET_FLEET"] = str(root)
    return root


def api_url() -> str:
    """$PREFECT_API_URL; else `hubfleet server --postgres` if it runs here; else the local
    SQLite server `hubfleet demo` uses (started if needed)."""
    from hubfleet.server import connect

    return connect()


def run_flow(flow: Any, **params: Any) -> Any:
    """Run a flow in this process against the local server (or $PREFECT_API_URL)."""
    from hubfleet.interrupt import run_flow_interruptible
    from hubfleet.server import connect

    load_fleet(fleet_dir())  # fail fast, before any server starts
    connect()
    return run_flow_interruptible(flow, **params)


def hub_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="hubs")
    for column in ("hub", "tier", "kind", "url", "verdict", "latency ms", "reason"):
        table.add_column(column)
    colours = {"healthy": "green", "degraded": "yellow", "down": "red"}
    for row in rows:
        verdict = row["verdict"]
        table.add_row(
            row["hub"],
            row["tier"],
            row["kind"],
            row["url"] or "-",
            f"[{colours.get(verdict, 'white')}]{verdict}[/]",
            f"{row['latency_ms']:.0f}" if row["latency_ms"] is not None else "-",
            "" if verdict == "healthy" else row["reason"],
        )
    return table


def plain(value: Any) -> Any:
    """A flow's typed result (hubfleet.results), also inside a dict or list, as plain data:
    what the CLI prints."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
