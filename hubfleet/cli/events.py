"""`hubfleet events ...`: event hubs from the command line (each command runs a flow).

hubfleet events sync [--dry-run]        scheduled runs follow the fleet's event hubs
hubfleet events create CLUSTER HUB      deploy now, pre-warm, schedule reminders/expiry
hubfleet events extend CLUSTER HUB END  move the expiry (the old run is cancelled)
hubfleet events expire CLUSTER HUB      expire an event hub that is over
hubfleet events reap [--dry-run]        what the hourly reaper does
"""

from datetime import datetime
from typing import Annotated, Any

import typer

from hubfleet.errors import HubfleetError


class BadDate(HubfleetError):
    """A date-time given on the command line cannot be used."""


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadDate(
            f"END {text!r} is not a date-time; write e.g. 2027-03-18T18:00:00+01:00"
        ) from None
    if value.tzinfo is None:
        raise BadDate(f"END {text!r} has no UTC offset; add one, e.g. {text}+01:00")
    return value


def register(app: typer.Typer) -> None:
    """Add the `events` command group to the hubfleet CLI."""
    from hubfleet.cli.common import (
        DryRunOpt,
        FleetOpt,
        OperatorOpt,
        out,
        plain,
        run_flow,
        use_fleet,
    )

    events = typer.Typer(help="Event hubs: schedules, create, extend, expire, reap.")

    def show(typed: Any) -> None:
        """A flow's result: each scheduled, kept or cancelled run on its line, then the rest."""
        result: dict[str, Any] = plain(typed)
        for key in ("scheduled", "kept", "cancelled"):
            for line in result.get(key, []):
                out.print(f"{key}: {line}")
        rest = {k: v for k, v in result.items() if k not in ("scheduled", "kept", "cancelled")}
        out.print(rest)

    @events.command()
    def sync(dry_run: DryRunOpt = False, operator: OperatorOpt = None, fleet: FleetOpt = None):
        """Make the scheduled create/reminder/expiry runs match the fleet's event hubs."""
        use_fleet(fleet)
        from flows.event_hubs import sync_event_schedules

        show(run_flow(sync_event_schedules, dry_run=dry_run, operator=operator))

    @events.command()
    def create(
        cluster: str,
        hub: str,
        dry_run: DryRunOpt = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ):
        """Deploy an event hub now, pre-warm it, schedule its reminders and expiry."""
        use_fleet(fleet)
        from flows.deploy_hub import check_hub_values
        from flows.event_hubs import create_event_hub
        from hubfleet.loader import load_fleet
        from hubfleet.paths import fleet_dir

        check_hub_values(load_fleet(fleet_dir()), cluster, hub)  # as `deploy` does
        show(
            run_flow(create_event_hub, cluster=cluster, hub=hub, dry_run=dry_run, operator=operator)
        )

    @events.command()
    def extend(
        cluster: str,
        hub: str,
        end: Annotated[str, typer.Argument(help="New end, e.g. 2027-03-18T18:00:00+01:00.")],
        dry_run: DryRunOpt = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ):
        """Move an event's end; its scheduled expiry and reminders move with it."""
        use_fleet(fleet)
        new_end = _when(end)
        from flows.event_hubs import extend_event_hub

        show(
            run_flow(
                extend_event_hub,
                cluster=cluster,
                hub=hub,
                new_end=new_end,
                dry_run=dry_run,
                operator=operator,
            )
        )

    @events.command()
    def expire(
        cluster: str,
        hub: str,
        dry_run: DryRunOpt = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
        export_timeout: Annotated[
            float,
            typer.Option(help="Seconds a Kubernetes hub's export Job may take (then: fail)."),
        ] = 3600.0,
    ):
        """Expire an event hub that is over: export, revoke, remove. Standing hubs: refused."""
        use_fleet(fleet)
        from flows.event_hubs import expire_event_hub

        show(
            run_flow(
                expire_event_hub,
                cluster=cluster,
                hub=hub,
                dry_run=dry_run,
                operator=operator,
                export_timeout=export_timeout,
            )
        )

    @events.command()
    def reap(dry_run: DryRunOpt = False, operator: OperatorOpt = None, fleet: FleetOpt = None):
        """Expire event hubs past end + grace that still exist; report overdue creations."""
        use_fleet(fleet)
        from flows.event_hubs import reap_expired_event_hubs

        show(run_flow(reap_expired_event_hubs, dry_run=dry_run, operator=operator))

    app.add_typer(events, name="events")
