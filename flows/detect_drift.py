"""detect_drift: nightly, does every cluster still match its Terraform? Changes nothing.

Runbook: for each cluster with a `terraform:` section, `plan -detailed-exitcode` (exit 2:
reality and the registry differ) → one table artifact for the fleet → a
`hubfleet.cluster.drifted` event per drifted cluster (automations notify from it). One
cluster that cannot be planned is reported and does not stop the others.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event

from flows.operation import begin_fleet
from hubfleet.model import Cluster
from hubfleet.results import ClusterDrift, Drift, FleetDrift
from tasks.cluster_login import provider_credentials_env
from tasks.terraform import PlanSummary, terraform_init, terraform_plan, workspace

DRIFT_EVENT = "hubfleet.cluster.drifted"


async def check_cluster(cluster: Cluster) -> PlanSummary:
    """Plan one cluster against its state (reads only; the plan file is discarded)."""
    with workspace(cluster, await provider_credentials_env(cluster)) as ws:
        await terraform_init(ws)
        return await terraform_plan(ws)


def announce_drift(summary: PlanSummary, revision: str) -> None:
    """Emit the drift event of one cluster, with what changed as its payload."""
    emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"hubfleet.cluster.{summary.cluster}"},
        payload={
            "cluster": summary.cluster,
            "counts": summary.counts(),
            "create": summary.create,
            "update": summary.update,
            "replace": summary.replace,
            "destroy": summary.destroy,
            "revision": revision,
        },
    )


@flow(name="detect_drift", flow_run_name="detect_drift")
async def detect_drift(operator: str | None = None) -> FleetDrift:
    """Report, per cluster, whether Terraform would change anything (and what)."""
    op = await begin_fleet("detect_drift", operator)
    fleet = op.fleet
    logger = get_run_logger()
    rows: list[ClusterDrift] = []
    for cluster in fleet.clusters:
        if cluster.terraform is None:
            continue
        try:
            summary = await check_cluster(cluster)
        except Exception as exc:
            logger.error("drift check of %s failed: %s", cluster.name, exc)
            rows.append(
                ClusterDrift(cluster=cluster.name, status=Drift.error, changes=str(exc)[:300])
            )
            continue
        if summary.has_changes:
            announce_drift(summary, op.revision)
            changed = summary.create + summary.update + summary.replace + summary.destroy
            rows.append(
                ClusterDrift(
                    cluster=cluster.name,
                    status=Drift.drifted,
                    changes=f"{summary.counts()}: {', '.join(changed)}",
                )
            )
        else:
            rows.append(ClusterDrift(cluster=cluster.name, status=Drift.in_sync))
    drift = FleetDrift(clusters=rows)
    failed = drift.of(Drift.error)
    await acreate_table_artifact(
        key="terraform-drift",
        table=[r.row() for r in rows],
        description=f"drift: {len(drift.of(Drift.drifted))} drifted, "
        f"{len(failed)} failed of {len(rows)} clusters",
    )
    if failed:  # fail the run so it is noticed, after every cluster was checked
        raise RuntimeError(f"drift check failed for: {', '.join(failed)}")
    return drift
