"""destroy_cluster: tear down a cluster the fleet no longer uses, only with approval.

Runbook: refuse while the fleet lists hubs on the cluster → plan the destroy → report
what it destroys, data stores first (nothing is exported here: export hub data before) →
always pause for approval → apply the saved destroy plan → remove the cluster's access
block.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from blocks.cluster_access import ClusterAccess
from flows.operation import ClusterOperation, begin_cluster
from flows.parameters import ApprovalTimeout
from flows.provision_cluster import ask_approval, require_terraform
from hubfleet.errors import HubfleetError
from hubfleet.results import ClusterDestroyed
from tasks.cluster_login import provider_credentials_env
from tasks.locks import cluster_lock, ensure_concurrency_limits
from tasks.terraform import (
    PlanSummary,
    terraform_apply,
    terraform_init,
    terraform_outputs,
    terraform_plan,
)
from tasks.terraform import workspace as terraform_workspace


class ClusterInUse(HubfleetError):
    """The fleet still lists hubs on the cluster; it must not be destroyed."""


def refuse_if_hubs(op: ClusterOperation) -> None:
    if op.cluster.hubs:
        names = ", ".join(h.name for h in op.cluster.hubs)
        raise ClusterInUse(
            f"cluster {op.cluster.name!r} still has hubs in the fleet: {names}. Tear them "
            f"down and remove them from fleet/clusters/{op.cluster.name}/cluster.yaml "
            "first. Nothing was changed."
        )


async def report_destruction(op: ClusterOperation, summary: PlanSummary, stores: list[str]) -> None:
    """The destroy plan as an artifact, data stores listed first."""
    listed = "\n".join(f"- `{s}`" for s in stores) or "- (none reported by the module)"
    await acreate_markdown_artifact(
        key=f"destroy-{op.cluster.name}",
        markdown=f"## Data stores destroyed with the cluster\n\n{listed}\n\n"
        "hubfleet exports nothing here: export hub data before approving.\n\n"
        + summary.to_markdown(f"Destroy {op.cluster.name}"),
        description=f"destroy {op.cluster.name}: {summary.counts()}; {len(stores)} data store(s)",
    )


async def remove_cluster_access(op: ClusterOperation) -> None:
    """Delete the cluster's ClusterAccess block: its credentials point at nothing now."""
    try:
        await ClusterAccess.adelete(op.cluster.name)
    except ValueError:
        get_run_logger().info("no access block stored for %s", op.cluster.name)


@flow(name="destroy_cluster", flow_run_name="destroy_cluster {cluster}")
async def destroy_cluster(
    cluster: str,
    dry_run: bool = False,
    operator: str | None = None,
    approval_timeout: ApprovalTimeout = 3600,
) -> ClusterDestroyed:
    """Destroy a cluster with no hubs; always asks for approval; dry_run only reports."""
    op = await begin_cluster("destroy_cluster", cluster, operator)
    require_terraform(op.cluster)
    refuse_if_hubs(op)
    with terraform_workspace(op.cluster, await provider_credentials_env(op.cluster)) as ws:
        await terraform_init(ws)
        stores = (await terraform_outputs(ws)).public.get("data_stores") or []
        summary = await terraform_plan(ws, destroy=True)
        await report_destruction(op, summary, stores)
        result = ClusterDestroyed(cluster=cluster, plan=summary, data_stores=stores)
        if dry_run:
            return result
        answer = await ask_approval(op, summary, "destroy", approval_timeout)
        result = result.model_copy(update={"approved": answer.approve, "reason": answer.reason})
        if not answer.approve:
            get_run_logger().warning("rejected: %s was not destroyed", cluster)
            return result
        await ensure_concurrency_limits(op.fleet.model_copy(update={"clusters": [op.cluster]}))
        async with cluster_lock(cluster):
            await terraform_apply(ws)
    await remove_cluster_access(op)
    return result.model_copy(update={"destroyed": True})
