"""provision_cluster: make a cluster match its `terraform:` section, with a human in the loop.

Runbook: plan → plan summary artifact → (destroys or replaces anything? pause until a
human approves with a reason in the Prefect UI) → apply the saved plan → read outputs →
log in and store the cluster's access in a block → create its concurrency limits →
deploy the support chart.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput

from blocks.cluster_access import ClusterAccess
from flows.operation import ClusterOperation, begin_cluster
from flows.parameters import ApprovalTimeout
from hubfleet.errors import HubfleetError
from hubfleet.model import Cluster
from hubfleet.results import ClusterProvisioned
from tasks.cluster_login import cluster_kubeconfig, provider_credentials_env
from tasks.locks import cluster_lock, ensure_concurrency_limits
from tasks.terraform import (
    PlanSummary,
    TerraformOutputs,
    Workspace,
    terraform_apply,
    terraform_init,
    terraform_outputs,
    terraform_plan,
    workspace,
)

#: How often a paused run checks whether it was resumed.
APPROVAL_POLL_SECONDS = 2


class NoTerraform(HubfleetError):
    """The cluster has no `terraform:` section, so there is nothing to provision."""


class Approval(RunInput):
    """What a human answers when a plan destroys or replaces resources."""

    approve: bool
    reason: str


def require_terraform(cluster: Cluster) -> None:
    if cluster.terraform is None:
        raise NoTerraform(
            f"cluster {cluster.name!r} has no 'terraform:' section in "
            f"fleet/clusters/{cluster.name}/cluster.yaml; add one (module, state, inputs) to "
            "provision it with hubfleet. Nothing was changed."
        )


async def publish_plan(op: ClusterOperation, summary: PlanSummary, title: str) -> None:
    """Record the plan summary as a markdown artifact of this run."""
    await acreate_markdown_artifact(
        key=f"plan-{op.cluster.name}",
        markdown=summary.to_markdown(title)
        + f"\noperator: {op.operator} · fleet revision: {op.revision}\n",
        description=f"{title}: {summary.counts()}",
    )


async def ask_approval(
    op: ClusterOperation, summary: PlanSummary, what: str, timeout: int
) -> Approval:
    """Pause this run until someone approves or rejects `what` (with a reason) in the UI."""
    logger = get_run_logger()
    logger.warning(
        "%s on %s needs approval (%s); resume the run in the Prefect UI with approve and a reason",
        what,
        op.cluster.name,
        summary.counts(),
    )
    answer = await apause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=f"**{what}** on `{op.cluster.name}`: {summary.counts()}. "
            "See the plan artifact of this run.",
            approve=False,
        ),
        timeout=timeout,
        poll_interval=APPROVAL_POLL_SECONDS,
        key=f"approve-{what}",
    )
    verdict = "approved" if answer.approve else "rejected"
    logger.info("%s %s by the reviewer: %s", what, verdict, answer.reason)
    return answer


async def store_cluster_access(op: ClusterOperation, outputs: TerraformOutputs) -> str:
    """Log in to the new cluster and save its kubeconfig in a ClusterAccess block."""
    kubeconfig, server = await cluster_kubeconfig(op.cluster, outputs)
    await ClusterAccess(kubeconfig=kubeconfig, context=op.cluster.name, server=server).asave(
        op.cluster.name, overwrite=True
    )
    get_run_logger().info("stored cluster access for %s (%s)", op.cluster.name, server)
    return server


async def create_cluster_limits(op: ClusterOperation) -> list[str]:
    """Create the cluster's (and its hubs') concurrency limits; idempotent."""
    only_this = op.fleet.model_copy(update={"clusters": [op.cluster]})
    return await ensure_concurrency_limits(only_this)


async def deploy_support_chart(op: ClusterOperation) -> str:
    """Deploy the per-cluster support chart (helm/support) with `deploy_support`.

    The `testing` module's endpoint is a made-up address (no cluster exists behind it), so
    there the step is skipped and the run says so.
    """
    terraform = op.cluster.terraform
    if terraform is not None and terraform.module == "testing":
        get_run_logger().info(
            "support chart for %s: skipped (module 'testing' has no real cluster)",
            op.cluster.name,
        )
        return "skipped (testing module)"
    from flows.deploy_fleet import deploy_support

    await deploy_support(op.cluster.name, operator=op.operator)
    return "deployed"


async def plan_cluster(op: ClusterOperation, ws: Workspace, destroy: bool = False) -> PlanSummary:
    await terraform_init(ws)
    return await terraform_plan(ws, destroy=destroy)


@flow(name="provision_cluster", flow_run_name="provision_cluster {cluster} ({action})")
async def provision_cluster(
    cluster: str,
    action: Literal["plan", "apply"] = "plan",
    dry_run: bool = False,
    operator: str | None = None,
    approval_timeout: ApprovalTimeout = 3600,
) -> ClusterProvisioned:
    """Plan, and with action=apply apply, the cluster's Terraform module.

    dry_run (or action=plan) stops after the plan artifact: nothing is changed. A plan that
    destroys or replaces anything waits for approval; a rejection changes nothing.
    """
    op = await begin_cluster("provision_cluster", cluster, operator)
    require_terraform(op.cluster)
    logger = get_run_logger()
    mode = "plan" if dry_run or action == "plan" else "apply"
    approved: bool | None = None
    reason: str | None = None

    with workspace(op.cluster, await provider_credentials_env(op.cluster)) as ws:
        summary = await plan_cluster(op, ws)
        await publish_plan(op, summary, f"{mode.capitalize()}: provision {cluster}")
        planned = ClusterProvisioned(
            cluster=cluster, action=mode, plan=summary, needs_approval=summary.needs_approval
        )
        if mode == "plan":
            return planned

        if summary.needs_approval:
            answer = await ask_approval(op, summary, "provision", approval_timeout)
            approved, reason = answer.approve, answer.reason
            if not answer.approve:
                logger.warning("rejected: nothing was applied to %s", cluster)
                return planned.model_copy(update={"approved": approved, "reason": reason})

        # Hub operations on this cluster wait while it changes, and it waits for them.
        await create_cluster_limits(op)
        if summary.has_changes:
            async with cluster_lock(cluster):
                await terraform_apply(ws)
        outputs = await terraform_outputs(ws)

    server = await store_cluster_access(op, outputs)
    support_chart = await deploy_support_chart(op)
    return planned.model_copy(
        update={
            "approved": approved,
            "reason": reason,
            "applied": summary.has_changes,
            "outputs": outputs.public,
            "server": server,
            "support_chart": support_chart,
        }
    )
