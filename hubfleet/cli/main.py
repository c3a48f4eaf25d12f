"""The `hubfleet` command line: the app, its top-level commands, and error handling.

User errors (an invalid fleet, an unknown hub, a provider not built yet) are printed
plainly with exit code 2: never a traceback. Prefect is imported only by the commands that
run flows, so `hubfleet validate` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hubfleet.cli.common import (
    DryRunOpt,
    FleetOpt,
    LockWaitOpt,
    OperatorOpt,
    err,
    out,
    plain,
    run_flow,
    use_fleet,
)
from hubfleet.errors import HubfleetError
from hubfleet.layers import ValuesInvalid
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.model import Fleet
from hubfleet.paths import fleet_dir

app = typer.Typer(
    help="Run a fleet of JupyterHubs: validate the registry, deploy, check health, "
    "tear down, and try it all locally with `hubfleet demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def validate(
    path: Annotated[Path | None, typer.Argument(help="Fleet directory (default: ./fleet).")] = None,
) -> None:
    """Check the fleet registry and every hub's values (parsed, merged as a deploy would,
    checked against the chart's schema); list every problem as file:line: field: message."""
    from hubfleet.values import check_fleet_values

    fleet = load_fleet(path or fleet_dir())
    secrets, note = _secret_values_if_reachable(fleet)
    problems = check_fleet_values(fleet, secrets)
    if note:
        err.print(f"note: {note}", soft_wrap=True)
    if problems:
        raise FleetInvalid(sorted(problems, key=lambda p: (str(p.file), p.line)))
    out.print(f"fleet {fleet.settings.name} is valid: {fleet.summary()}")


def _secret_values_if_reachable(fleet: Fleet) -> tuple[dict[tuple[str, str], Any] | None, str]:
    """Each hub's secret values layer (its `hub-values-<cluster>-<hub>` block), read only
    when a Prefect server is configured and answers; else None and why they were skipped.
    Prefect is imported only then, so `validate` stays fast without a server."""
    api = os.environ.get("PREFECT_API_URL")
    skipped = "secret values in blocks (hub-values-<cluster>-<hub>) were not checked: "
    if not api:
        return None, skipped + "no Prefect server configured (set PREFECT_API_URL to check them)"
    import httpx

    def unreachable(exc: Exception) -> tuple[None, str]:
        return None, skipped + f"the Prefect server at {api} did not answer ({type(exc).__name__})"

    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        return unreachable(exc)
    import asyncio

    from tasks.cluster_session import load_secret_values

    async def read_all() -> dict[tuple[str, str], Any]:
        found = {}
        for cluster in fleet.clusters:
            for hub in cluster.hubs:
                found[(cluster.name, hub.name)] = await load_secret_values(cluster.name, hub.name)
        return found

    try:
        return asyncio.run(read_all()), ""
    except (httpx.HTTPError, OSError) as exc:  # it went away while being read
        return unreachable(exc)


@app.command()
def deploy(
    cluster: str,
    hub: str,
    dry_run: DryRunOpt = False,
    lock_wait: LockWaitOpt = None,
    operator: OperatorOpt = None,
    fleet: FleetOpt = None,
) -> None:
    """Deploy or update one hub (a Prefect flow run, recorded in the run history)."""
    use_fleet(fleet)
    from flows.deploy_hub import check_hub_values, deploy_hub

    # The flow checks them too; checked here first, a values error is the same file:line
    # lines as `validate` prints, not a failed run with Prefect's traceback in the log.
    check_hub_values(load_fleet(fleet_dir()), cluster, hub)
    result = run_flow(
        deploy_hub,
        cluster=cluster,
        hub=hub,
        dry_run=dry_run,
        lock_timeout=lock_wait,
        operator=operator,
    )
    out.print(plain(result))


@app.command()
def teardown(
    cluster: str,
    hub: str,
    dry_run: DryRunOpt = False,
    delete_data: Annotated[
        bool,
        typer.Option(
            "--delete-data",
            help="Delete the users' homes with the hub instead of keeping them (exported, "
            "or archived: Kubernetes home volumes retained and labelled).",
        ),
    ] = False,
    lock_wait: LockWaitOpt = None,
    operator: OperatorOpt = None,
    fleet: FleetOpt = None,
) -> None:
    """Remove a hub for good: homes kept (exported or archived) unless --delete-data,
    ops token revoked, release and namespace (or local processes) removed."""
    use_fleet(fleet)
    from flows.teardown_hub import teardown_hub

    result = run_flow(
        teardown_hub,
        cluster=cluster,
        hub=hub,
        dry_run=dry_run,
        keep_data=not delete_data,
        lock_timeout=lock_wait,
        operator=operator,
    )
    out.print(plain(result))


@app.command()
def demo(
    down: Annotated[
        bool, typer.Option("--down", help="Stop every process the demo started.")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(help="Port of the local Prefect server (default: its last, else 4200)."),
    ] = None,
    fleet: FleetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's run logs.")] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Print when the worker runs the demo event, and return without watching.",
        ),
    ] = False,
    event_pace: Annotated[
        float,
        typer.Option(
            min=5,
            help="Seconds between the demo event's steps: created after one, reminded and "
            "ended after two, expired after three. Used when a demo event is first "
            "scheduled; a re-run keeps its times (`--down` forgets them).",
        ),
    ] = 60.0,
) -> None:
    """Run the whole pipeline locally: a Prefect server on SQLite, real JupyterHubs, a
    worker, and a short demo event hub that the worker creates and expires."""
    from hubfleet import demo as demo_mod

    root = use_fleet(fleet)
    if down:
        demo_mod.down(load_fleet(root), out)
        return
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    demo_mod.up(load_fleet(root), port, out, pace=event_pace, wait=not no_wait)


# Commands grouped by area, one module each (hubfleet/cli/<area>.py). Each module defines
# `register(app: typer.Typer) -> None`; add a module here to add its commands.
_COMMAND_MODULES: tuple[str, ...] = (
    "hubfleet.cli.ops",
    "hubfleet.cli.health",
    "hubfleet.cli.clusters",
    "hubfleet.cli.credentials",
    "hubfleet.cli.pilot",
    "hubfleet.cli.events",
    "hubfleet.cli.locks",
    "hubfleet.cli.fleet",
    "hubfleet.cli.status",
    "hubfleet.cli.import_fleet",
    "hubfleet.cli.backup",
    "hubfleet.cli.usage",
    "hubfleet.cli.oauth",
)


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_commands()


def main() -> None:
    """Entry point: turn the errors a user can fix into plain messages and exit code 2."""
    try:
        app()
    except ValuesInvalid as exc:
        err.print(str(exc), soft_wrap=True)
        sys.exit(2)
    except FleetInvalid as exc:
        for problem in exc.problems:
            err.print(str(problem), soft_wrap=True)
        err.print(f"fleet is invalid: {len(exc.problems)} problem(s); nothing was run")
        sys.exit(2)
    except (LookupError, HubfleetError) as exc:
        err.print(f"error: {exc}", soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        # A value outside an operation's bounds (flows/parameters.py), found by Prefect
        # before the flow ran: nothing was changed. Imported only if Prefect was.
        bad_parameters = getattr(sys.modules.get("prefect.exceptions"), "ParameterTypeError", ())
        if not isinstance(exc, bad_parameters):
            raise
        err.print(f"error: {str(exc)[:500]}\nNothing was run.", soft_wrap=True)
        sys.exit(2)
