"""`hubfleet cluster ...`: provision, destroy and drift-check clusters with Terraform."""

from __future__ import annotations

from typing import Annotated

import typer

from hubfleet.cli.common import DryRunOpt, FleetOpt, OperatorOpt, out, run_flow, use_fleet
from hubfleet.results import Drift

cluster_app = typer.Typer(
    help="Provision clusters with Terraform: plan, apply (with approval), destroy, drift.",
    no_args_is_help=True,
)


@cluster_app.command()
def provision(
    cluster: str,
    apply: Annotated[
        bool, typer.Option("--apply", help="Apply the plan (default: only plan).")
    ] = False,
    dry_run: DryRunOpt = False,
    operator: OperatorOpt = None,
    fleet: FleetOpt = None,
) -> None:
    """Plan (and with --apply, apply) the cluster's Terraform; destroys/replaces need approval
    in the Prefect UI."""
    use_fleet(fleet)
    from flows.provision_cluster import provision_cluster

    result = run_flow(
        provision_cluster,
        cluster=cluster,
        action="apply" if apply else "plan",
        dry_run=dry_run,
        operator=operator,
    )
    out.print(f"{cluster}: {result.plan.counts()}; applied: {result.applied}")


@cluster_app.command()
def destroy(
    cluster: str,
    dry_run: DryRunOpt = False,
    operator: OperatorOpt = None,
    fleet: FleetOpt = None,
) -> None:
    """Destroy a cluster the fleet lists no hubs on (always asks approval in the UI)."""
    use_fleet(fleet)
    from flows.destroy_cluster import destroy_cluster

    result = run_flow(destroy_cluster, cluster=cluster, dry_run=dry_run, operator=operator)
    stores = ", ".join(result.data_stores) or "none"
    out.print(f"{cluster}: destroyed: {result.destroyed}; data stores: {stores}")


@cluster_app.command()
def drift(operator: OperatorOpt = None, fleet: FleetOpt = None) -> None:
    """Check every cluster for drift (terraform plan); exit 1 if any drifted."""
    use_fleet(fleet)
    from flows.detect_drift import detect_drift

    drift = run_flow(detect_drift, operator=operator)
    for c in drift.clusters:
        out.print(f"{c.cluster}: {c.status} {c.changes}".rstrip())
    if drift.of(Drift.drifted):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `hubfleet cluster` to the CLI."""
    app.add_typer(cluster_app, name="cluster")
