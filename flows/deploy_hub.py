"""deploy_hub: bring one hub to what the fleet says, then prove it is healthy."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.check_hub_health import check_hub_health
from flows.operation import Operation, begin
from hubfleet.errors import ProviderNotReady
from hubfleet.localhub import hub_config_from_values
from hubfleet.model import Provider
from hubfleet.values import load_values_files
from tasks.hub_credentials import ensure_ops_service
from tasks.local_hub import local_hub, plan_local_hub, start_local_hub


def require_local(op: Operation) -> None:
    if op.cluster.provider is not Provider.local:
        raise ProviderNotReady(
            f"cluster {op.cluster.name!r} uses provider {op.cluster.provider.value!r}, which "
            "deploys with Helm; only the 'local' provider is available in this version. "
            "Nothing was changed."
        )


@flow(name="deploy_hub", flow_run_name="deploy_hub {cluster}/{hub}")
async def deploy_hub(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> dict[str, Any]:
    """Deploy or update one hub; with dry_run, only report what would change."""
    op = await begin("deploy_hub", cluster, hub, operator)
    require_local(op)
    assert op.hub is not None
    logger = get_run_logger()

    values = load_values_files(op.fleet.hub_values_files(cluster, op.hub))
    local = local_hub(op.fleet, cluster, hub)
    plan = plan_local_hub(local, hub_config_from_values(values))
    logger.info("%s: %s", op.target, plan.action)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"deploy-{cluster}-{hub}",
            markdown=f"# Dry run: deploy {op.target}\n\nWould **{plan.action}** the hub.\n\n"
            f"```python\n{plan.config}\n```\n",
            description=f"dry run: would {plan.action} {op.target}",
        )
        return {"hub": op.target, "action": plan.action, "dry_run": True}

    running = local.state() if plan.action == "unchanged" else start_local_hub(local, plan)
    assert running is not None  # "unchanged" means it is running
    url = running.url
    token = await ensure_ops_service(cluster, hub, local, url)
    health = await check_hub_health(cluster, hub, operator=op.operator)
    await acreate_markdown_artifact(
        key=f"deploy-{cluster}-{hub}",
        markdown=f"# Deployed {op.target}\n\n| | |\n|---|---|\n| action | {plan.action} |\n"
        f"| url | {url} |\n| ops token | {token} |\n| health | {health['verdict']} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"deploy {op.target}: {plan.action}, {health['verdict']}",
    )
    if health["verdict"] == "down":
        raise RuntimeError(f"{op.target} is down after deploy: {health['reason']}")
    return {"hub": op.target, "action": plan.action, "url": url, "health": health["verdict"]}
