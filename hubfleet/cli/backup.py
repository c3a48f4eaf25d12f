"""`hubfleet backup` and `hubfleet restore`: standing hubs' homes and hub databases.

hubfleet backup [CLUSTER [HUB]] [--dry-run]      copy, verify, keep `backup.keep` copies
hubfleet restore CLUSTER HUB [--user U] [--copy STAMP] [--dry-run]

Each runs its flow (flows/backup_hub.py, flows/restore_hub.py) in this process, recorded in
the run history like a scheduled run.
"""

import re
from typing import Annotated, Any

import typer

from hubfleet.errors import HubfleetError


class BadArgument(HubfleetError):
    """A command-line value cannot be used; nothing was run."""


def _stamp(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d{8}T\d{6}Z", value):
        raise BadArgument(
            f"--copy {value!r} is not a copy's name; use its UTC time as shown by "
            "`hubfleet restore ... --dry-run`, e.g. 20270315T010000Z. Nothing was run."
        )
    return value


def register(app: typer.Typer) -> None:
    """Add `backup` and `restore` to the hubfleet CLI."""
    from hubfleet.cli.common import (
        DryRunOpt,
        FleetOpt,
        LockWaitOpt,
        OperatorOpt,
        out,
        plain,
        run_flow,
        use_fleet,
    )

    def show(result: Any) -> None:
        out.print(plain(result))

    @app.command()
    def backup(
        cluster: Annotated[
            str | None, typer.Argument(help="Only this cluster's standing hubs.")
        ] = None,
        hub: Annotated[str | None, typer.Argument(help="Only this hub (any kind).")] = None,
        dry_run: DryRunOpt = False,
        lock_wait: LockWaitOpt = None,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Back up homes and hub databases to fleet.yaml's `backup.url`, verify every copy
        (file count and sizes), then keep the newest `backup.keep` verified copies per hub.
        Without CLUSTER: every standing hub (what the schedule runs)."""
        use_fleet(fleet)
        if hub is not None:
            assert cluster is not None
            from flows.backup_hub import backup_hub

            show(
                run_flow(
                    backup_hub,
                    cluster=cluster,
                    hub=hub,
                    dry_run=dry_run,
                    lock_timeout=lock_wait,
                    operator=operator,
                )
            )
            return
        from flows.backup_hub import backup_fleet

        only = [cluster] if cluster else None
        show(
            run_flow(
                backup_fleet,
                dry_run=dry_run,
                operator=operator,
                only=only,
                lock_timeout=lock_wait,
            )
        )

    @app.command()
    def restore(
        cluster: str,
        hub: str,
        user: Annotated[
            str | None, typer.Option("--user", help="Restore only this user's home.")
        ] = None,
        copy: Annotated[
            str | None,
            typer.Option(
                "--copy", help="Which copy (its UTC time, e.g. 20270315T010000Z); default newest."
            ),
        ] = None,
        dry_run: DryRunOpt = False,
        lock_wait: LockWaitOpt = None,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Bring a hub's homes back from a verified backup (files in the copy are written
        back; files made since are kept). --dry-run says what would be restored."""
        use_fleet(fleet)
        from flows.restore_hub import restore_hub

        show(
            run_flow(
                restore_hub,
                cluster=cluster,
                hub=hub,
                user=user,
                stamp=_stamp(copy),
                dry_run=dry_run,
                lock_timeout=lock_wait,
                operator=operator,
            )
        )
