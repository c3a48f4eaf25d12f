"""Fleet operations from the command line: one command per flow, with the flow's name and
parameters (`deploy_fleet` is `hubfleet deploy-fleet`), run in this process as a recorded
Prefect run, exactly as its deployment runs it from a worker.

Progress is the run's own log, per hub (waiting, deploying, gating, done, rolled back); at
the end a table of outcomes. The exit code is 1 when the run ended Failed (a hub not
deployed, an unhealthy hub in a sweep), 2 for bad input, 130 when interrupted.
"""

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer

SelectionArg = Annotated[
    list[str] | None,
    typer.Argument(help="Hubs: '*' (default), CLUSTER, CLUSTER/HUB; several allowed."),
]
WaveSizeOpt = Annotated[
    int | None, typer.Option(min=1, max=10_000, help="Prod hubs per wave (default: the fleet's).")
]
WavePercentOpt = Annotated[
    float | None,
    typer.Option(min=0.1, max=100, help="Prod hubs per wave as a percentage of the cluster's."),
]
RemoveOrphansOpt = Annotated[
    bool, typer.Option("--remove-orphans", help="Remove releases not in the fleet (else listed).")
]


class Gate(StrEnum):
    auto = "auto"
    health = "health"
    rollout = "rollout"
    none = "none"


GateOpt = Annotated[
    Gate,
    typer.Option(
        help="Gate after each hub: auto (health where probes can reach it, else rollout), "
        "health, rollout or none (no probes). Every gate first checks that the hub's pods "
        "are Ready."
    ),
]
WaitOpt = Annotated[str, typer.Option(help="How long helm waits for a hub's rollout (e.g. 5m).")]


#: The columns worth a terminal's width, in this order, when a row has them (a sweep's row
#: has 16; the full rows are in the run's artifacts).
COLUMNS = ("cluster", "hub", "tier", "verdict", "level", "reason", "failures", "from-version",
           "from_version", "to-version", "to_version", "outcome", "duration s")  # fmt: skip


TITLES = {"changes": "planned changes", "outcomes": "outcome per hub", "unhealthy": "not healthy"}


def _outcome_table(title: str, rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    columns = [c for c in COLUMNS if c in rows[0]] or list(rows[0])
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    return table


def _show(result: Any) -> None:
    """Print a flow's result: each list of rows as a table, each list of lines as lines,
    the rest as JSON."""
    from hubfleet.cli.common import out, plain

    result = plain(result)
    if not isinstance(result, dict):
        out.print(result)
        return
    if result.get("dry_run"):
        out.print("dry run: nothing was changed")
    rest = {}
    for key, value in result.items():
        if key == "dry_run" or value in (None, [], {}):
            continue
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            out.print(_outcome_table(TITLES.get(key) or str(key), value))
        elif isinstance(value, str) and "\n" in value:  # a diff, a report
            out.print(f"{key}:\n{value}")
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out.print(f"{key}:")
            for line in value:
                out.print(f"  {line}")
        else:
            rest[key] = value
    if rest:
        out.print(json.dumps(rest, indent=2, default=str, sort_keys=True))


def run_operation(
    flow: Any,
    failed: Callable[[dict[str, Any]], str | None] | None = None,
    show: Callable[[Any], None] = _show,
    **params: Any,
) -> None:
    """Run `flow` (see hubfleet.cli._run) and show its result. Exit 1 if the run Failed, or
    if `failed(result)` names what went wrong (a sweep that found unhealthy hubs)."""
    from hubfleet.cli.common import err, run_flow
    from hubfleet.errors import HubfleetError

    state = run_flow(flow, return_state=True, **params)
    result = state.result(raise_on_failure=False)
    if isinstance(result, (HubfleetError, LookupError)):
        raise result  # bad input: the CLI's one-line message, exit 2
    if isinstance(result, BaseException):
        err.print(f"{flow.name} failed: {result}")
        raise typer.Exit(1)
    show(result)
    problem = state.message if state.is_failed() else None
    from pydantic import BaseModel

    if problem is None and failed is not None and isinstance(result, (dict, BaseModel)):
        from hubfleet.cli.common import plain

        problem = failed(plain(result))
    if problem:
        err.print(f"{flow.name}: {problem}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the fleet-operation commands to the hubfleet CLI."""
    from hubfleet.cli.common import DryRunOpt, FleetOpt, OperatorOpt, use_fleet

    def _fleet_plan(name: str, load: Callable[[], Any], doc: str) -> None:
        def command(
            selection: SelectionArg = None,
            dry_run: DryRunOpt = False,
            wave_size: WaveSizeOpt = None,
            wave_percent: WavePercentOpt = None,
            remove_orphans: RemoveOrphansOpt = False,
            gate: GateOpt = Gate.auto,
            wait_timeout: WaitOpt = "5m",
            operator: OperatorOpt = None,
            fleet: FleetOpt = None,
        ) -> None:
            use_fleet(fleet)
            run_operation(
                load(),
                selection=selection or None,
                dry_run=dry_run,
                wave_size=wave_size,
                wave_percent=wave_percent,
                remove_orphans=remove_orphans,
                gate=gate.value,
                wait_timeout=wait_timeout,
                operator=operator,
            )

        command.__doc__ = doc
        app.command(name)(command)

    def _deploy_fleet() -> Any:
        from flows.deploy_fleet import deploy_fleet

        return deploy_fleet

    def _upgrade_fleet() -> Any:
        from flows.upgrade_fleet import upgrade_fleet

        return upgrade_fleet

    _fleet_plan(
        "deploy-fleet",
        _deploy_fleet,
        "Deploy the selected hubs: support first, staging, a health gate, then prod in "
        "waves; clusters in parallel (flow deploy_fleet).",
    )
    _fleet_plan(
        "upgrade-fleet",
        _upgrade_fleet,
        "Upgrade the selected hubs whose deployed chart version differs from the fleet's, "
        "in the same order and waves as deploy-fleet (flow upgrade_fleet).",
    )

    @app.command("check-fleet-health")
    def check_fleet_health(
        selection: SelectionArg = None,
        depth: Annotated[
            str, typer.Option(help="shallow (reachable, api, auth), deep (spawn too), a level.")
        ] = "shallow",
        per_cluster: Annotated[
            int | None, typer.Option(min=1, max=1_000, help="Hubs probed at once per cluster.")
        ] = None,
        alert_after: Annotated[
            int, typer.Option(min=1, max=1_000, help="Alert after this many failed sweeps.")
        ] = 3,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Sweep the selected hubs' health, record it, and alert on hubs failing
        `alert-after` sweeps in a row (flow check_fleet_health; what the schedules run)."""
        use_fleet(fleet)
        from flows.check_fleet_health import check_fleet_health as flow

        run_operation(
            flow,
            failed=lambda r: (
                f"{len(r['unhealthy'])} hub(s) not healthy" if r["unhealthy"] else None
            ),
            depth=depth,
            selection=selection or None,
            per_cluster=per_cluster,
            alert_after=alert_after,
            operator=operator,
        )

    @app.command("customize-hub")
    def customize_hub(
        cluster: str,
        hub: str,
        admin: Annotated[
            list[str] | None, typer.Option(help="An admin (repeat; replaces the list).")
        ] = None,
        allowed_user: Annotated[
            list[str] | None, typer.Option(help="A user allowed to log in (repeat).")
        ] = None,
        allowed_group: Annotated[
            list[str] | None, typer.Option(help="A group allowed to log in (repeat).")
        ] = None,
        default_image: Annotated[
            str | None, typer.Option(help="Default image, from the preset's allow-list.")
        ] = None,
        profile: Annotated[
            list[str] | None, typer.Option(help="A profile to offer, from the preset's (repeat).")
        ] = None,
        default_profile: Annotated[
            str | None, typer.Option(help="The profile chosen first.")
        ] = None,
        dry_run: DryRunOpt = False,
        gate: GateOpt = Gate.auto,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Change what a hub's community may change (admins, allowed users or groups,
        default image, profiles); options left out keep their value (flow customize_hub)."""
        use_fleet(fleet)
        from flows.customize_hub import customize_hub as flow

        run_operation(
            flow,
            cluster=cluster,
            hub=hub,
            admins=admin,
            allowed_users=allowed_user,
            allowed_groups=allowed_group,
            default_image=default_image,
            profiles=profile,
            default_profile=default_profile,
            dry_run=dry_run,
            gate=gate.value,
            operator=operator,
        )

    @app.command("deploy-support")
    def deploy_support(
        cluster: str,
        placeholders: Annotated[
            int | None,
            typer.Option(min=0, max=10_000, help="User-placeholder replicas (default: keep)."),
        ] = None,
        dry_run: DryRunOpt = False,
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Install or upgrade a cluster's support chart under the cluster lock (flow
        deploy_support)."""
        use_fleet(fleet)
        from flows.deploy_fleet import deploy_support as flow

        run_operation(
            flow, cluster=cluster, placeholders=placeholders, dry_run=dry_run, operator=operator
        )

    @app.command("publish-fleet-report")
    def publish_fleet_report(
        since: Annotated[str, typer.Option(help="How far back: 30d, 12h, 2w.")] = "30d",
        operator: OperatorOpt = None,
        fleet: FleetOpt = None,
    ) -> None:
        """Publish the fleet ops report as a Prefect artifact (flow publish_fleet_report;
        `hubfleet report` prints it without recording a run)."""
        use_fleet(fleet)
        from flows.fleet_report import publish_fleet_report as flow

        def published(_report: Any) -> None:
            from hubfleet.cli.common import out

            out.print(
                "published: artifact 'fleet-ops-report' of this run (Prefect UI, Artifacts); "
                "`hubfleet report` prints the same report here"
            )

        run_operation(flow, show=published, since=since, operator=operator)
