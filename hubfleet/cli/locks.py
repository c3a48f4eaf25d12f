"""`hubfleet locks` and `hubfleet unlock`: who holds which lock, and freeing a stale one."""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from hubfleet.errors import HubfleetError


async def held_locks() -> list[dict[str, Any]]:
    """Every hubfleet limit with a slot taken, with its most recent holder."""
    from prefect.client.orchestration import get_client

    from tasks.locks import describe_run, holders

    rows = []
    async with get_client() as client:
        limits: list[Any] = []
        while page := await client.read_global_concurrency_limits(limit=200, offset=len(limits)):
            limits += page
        for limit in limits:
            if not limit.name.startswith("hubfleet.") or limit.active_slots == 0:
                continue
            runs = await holders(limit.name, client)
            live = [r for r in runs if r.state and not r.state.is_final()]
            holder = (live or runs or [None])[0]
            since = holder.start_time if holder is not None else None
            rows.append(
                {
                    "lock": limit.name,
                    "slots": f"{limit.active_slots}/{limit.limit}",
                    "holder": describe_run(holder) if holder is not None else "unknown",
                    "age": str(datetime.now(UTC) - since).split(".")[0] if since else "-",
                }
            )
    return rows


def register(app: typer.Typer) -> None:
    from hubfleet.cli.common import FleetOpt, OperatorOpt, out, run_flow, use_fleet

    @app.command()
    def locks() -> None:
        """List held locks: the limit, its slots in use, the run holding it, for how long."""
        from rich.table import Table

        from hubfleet.server import connect

        connect()
        rows = asyncio.run(held_locks())
        if not rows:
            out.print("no locks held")
            return
        table = Table(title="held locks")
        for column in ("lock", "slots", "holder", "age"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["lock"], row["slots"], row["holder"], row["age"])
        out.print(table)

    @app.command()
    def unlock(
        target: Annotated[str, typer.Argument(help="CLUSTER/HUB whose lock to free.")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would be freed.")
        ] = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Free a hub's lock that no live run holds (refused while the holder runs).

        Locks of dead runs free themselves within two minutes; this is for the rest.
        """
        from flows.unlock_hub import unlock_hub

        use_fleet(fleet)
        cluster, _, hub = target.partition("/")
        if not hub:
            raise HubfleetError(f"unlock {target!r}: give the hub as CLUSTER/HUB")
        result = run_flow(unlock_hub, cluster=cluster, hub=hub, dry_run=dry_run, operator=operator)
        if not result.locked:
            out.print(f"{result.hub}: not locked")
        elif result.unlocked:
            out.print(f"{result.hub}: unlocked (was held by {result.holder})")
        else:
            out.print(f"{result.hub}: would unlock (held by {result.holder})")
