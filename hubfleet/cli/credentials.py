"""`hubfleet credentials`: the inventory with ages, and rotation on demand.

    hubfleet credentials                    every credential, its age and policy status
    hubfleet credentials --tls              also the TLS certificate of every non-local hub
    hubfleet credentials rotate SCOPE [--max-age 0d] [--dry-run]

Hub secrets (proxy auth token, cookie secret) are marked "on request": the weekly run never
rotates them; `rotate hub-secret:<cluster>/<hub>` (one hub, now) or `rotate kind:hub-secret`
(every hub, when due) does, and says first that the hub is redeployed and every user must
log in again.

Exit code 1 when anything is overdue, expired, or expiring within the warning window, so a
cron job or CI can alert on it.
"""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from hubfleet.credentials import (
    HUB_SECRET_WARNING,
    CredentialKind,
    CredentialRecord,
    Status,
    format_age,
)
from hubfleet.model import Fleet, Provider


def parse_max_age(text: str) -> timedelta:
    """'0d', '12h', '30d', '2w' -> a timedelta (0d rotates everything in scope now)."""
    from hubfleet.audit import parse_duration

    return parse_duration(text, "--max-age", units="hdw")


_COLOURS = {
    Status.ok: "green",
    Status.expiring: "yellow",
    Status.overdue: "red",
    Status.expired: "red",
    Status.unknown: "white",
}


def inventory_table(
    records: list[CredentialRecord], now: datetime, warn_within: timedelta
) -> tuple[Table, int]:
    """The inventory as a table, and how many records need attention."""
    table = Table(title="credentials")
    columns = ("owner", "kind", "id", "age", "max age", "status", "rotation", "consumed by", "note")
    for column in columns:
        table.add_column(column)
    flagged = 0
    for r in records:
        status = r.status(now, warn_within)
        flagged += status in (Status.expiring, Status.overdue, Status.expired)
        note = r.note
        if r.expires_at is not None:
            note = f"expires {r.expires_at:%Y-%m-%d} {note}".strip()
        table.add_row(
            r.owner,
            r.kind.value,
            r.ident,
            format_age(r.age(now)),
            format_age(r.max_age) if r.max_age else "-",
            f"[{_COLOURS[status]}]{status}[/]",
            rotation_mode(r.kind),
            ", ".join(r.consumed_by) or "-",
            note,
        )
    return table, flagged


def rotation_mode(kind: CredentialKind) -> str:
    """How a kind gets rotated: by the weekly run, on request only, or not by hubfleet."""
    if kind is CredentialKind.hub_secret:
        return "rotate on request"
    if kind is CredentialKind.tls_certificate:
        return "reported only"
    if kind is CredentialKind.oauth_client_secret:
        return "rotate by hand"  # no provider API issues a client secret (hubfleet.auth)
    return "weekly when due"


def tls_records(fleet: Fleet) -> list[CredentialRecord]:
    """The certificate each non-local hub presents on :443, read as the TLS health probe
    reads it; a hub that cannot be reached is listed with the reason."""
    from tasks.probes import certificate_not_after

    records = []
    for cluster in fleet.clusters:
        if cluster.provider is Provider.local:
            continue  # local hubs serve plain http on loopback
        for hub in cluster.hubs:
            try:
                not_after: datetime | None = certificate_not_after(hub.domain, 443, timeout=3)
                note = ""
            except Exception as exc:
                not_after, note = None, f"not checked: {exc}"[:80]
            records.append(
                CredentialRecord(
                    cluster.name,
                    hub.name,
                    CredentialKind.tls_certificate,
                    hub.domain,
                    None,
                    None,
                    None,
                    ("users (https)",),
                    expires_at=not_after,
                    note=note,
                )
            )
    return records


async def read_inventory(fleet: Fleet) -> list[CredentialRecord]:
    """The inventory from the Prefect blocks and the hubs' state (inside a throwaway flow,
    so the read is recorded like any other run)."""
    from prefect import flow

    from tasks.credential_inventory import collect_inventory

    @flow(name="credential_inventory")
    async def credential_inventory() -> list[CredentialRecord]:
        return await collect_inventory(fleet)

    return await credential_inventory()


def register(app: typer.Typer) -> None:
    """Add the `credentials` command group to the hubfleet CLI."""
    from hubfleet.cli.common import DryRunOpt, FleetOpt, OperatorOpt, out, run_flow, use_fleet
    from hubfleet.loader import load_fleet

    group = typer.Typer(
        help="Credential inventory (ages, policy) and rotation.",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def show(
        ctx: typer.Context,
        tls: Annotated[
            bool, typer.Option("--tls", help="Also read each non-local hub's certificate.")
        ] = False,
        fleet: FleetOpt = None,
    ) -> None:
        """Print every credential with its age; exit 1 if any is past policy or expiring."""
        if ctx.invoked_subcommand is not None:
            return
        root = use_fleet(fleet)
        spec = load_fleet(root)
        _ensure_api()
        records = asyncio.run(read_inventory(spec))
        if tls:
            records += tls_records(spec)
        table, flagged = inventory_table(
            records, datetime.now(UTC), spec.settings.credentials.warn_within
        )
        out.print(table)
        if flagged:
            out.print(f"{flagged} credential(s) past policy or expiring: rotate or renew them")
            raise typer.Exit(1)

    @group.command()
    def rotate(
        scope: Annotated[
            str,
            typer.Argument(
                help="all, cluster:<c>, hub:<c>/<h>, kind:<kind>, or hub-secret:<c>/<h> (a "
                "hub's proxy token and cookie secret: redeploys it, every user logs in again)."
            ),
        ],
        max_age: Annotated[
            str | None,
            typer.Option(help="Rotate what is older than this (e.g. 0d: everything in scope)."),
        ] = None,
        dry_run: DryRunOpt = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Run `rotate_credentials` now (the weekly schedule runs it with scope 'all')."""
        root = use_fleet(fleet)
        from flows.rotate_credentials import rotate_credentials
        from hubfleet.credentials import parse_scope

        target = parse_scope(scope, load_fleet(root))  # a bad scope fails before any server
        age = parse_max_age(max_age) if max_age is not None else None
        if target.asks_for_hub_secrets:
            out.print(f"[bold red]hub secrets in scope {scope}: {HUB_SECRET_WARNING}[/]")
        result = run_flow(
            rotate_credentials, scope=scope, max_age=age, dry_run=dry_run, operator=operator
        )
        if result.warning:
            out.print(f"[bold red]{result.warning}[/]")
        if dry_run:
            out.print("would rotate: " + (", ".join(result.would_rotate) or "nothing"))
            return
        for done in result.rotated:
            out.print(f"rotated {done.kind} {done.owner}: {done.old} -> {done.new}")
        out.print(f"{len(result.rotated)} rotated, {result.skipped} not due or skipped")

    app.add_typer(group, name="credentials")


def _ensure_api() -> None:

    from hubfleet.server import connect

    connect()
