"""teardown_hub: stop a hub and archive (or delete) its state; revoke its ops token."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import require_local
from flows.operation import begin
from hubfleet.paths import data_dir
from tasks.hub_credentials import load_ops_token
from tasks.local_hub import local_hub, remove_local_hub


@flow(name="teardown_hub", flow_run_name="teardown_hub {cluster}/{hub}")
async def teardown_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    keep_data: bool = True,
    operator: str | None = None,
) -> dict[str, Any]:
    """Stop the hub's processes; archive its data (or delete it with keep_data=false)."""
    op = await begin("teardown_hub", cluster, hub, operator)
    require_local(op)
    local = local_hub(op.fleet, cluster, hub)
    pids = local.pids()
    archive_root = data_dir() / "archive" / cluster if keep_data else None
    what = (
        f"stop processes {pids or 'none running'}; "
        + (
            f"archive {local.directory} under {archive_root}"
            if keep_data
            else f"delete {local.directory}"
        )
        + f"; delete the ops token block {HubOpsToken.block_name(cluster, hub)}"
    )
    get_run_logger().info("%s: %s", op.target, what)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"teardown-{cluster}-{hub}",
            markdown=f"# Dry run: teardown {op.target}\n\nWould {what}.\n",
            description=f"dry run: teardown {op.target}",
        )
        return {"hub": op.target, "dry_run": True, "would": what}

    archived = remove_local_hub(local, archive_root)
    block = await load_ops_token(cluster, hub)
    if block is not None:
        # The hub's database (and with it the service) is gone or archived offline, so the
        # token can no longer be used; the block goes too, so nothing looks current.
        await HubOpsToken.adelete(HubOpsToken.block_name(cluster, hub))
    await acreate_markdown_artifact(
        key=f"teardown-{cluster}-{hub}",
        markdown=f"# Torn down {op.target}\n\nStopped {pids or 'nothing'}; data "
        + (f"archived at `{archived}`" if archived else "deleted")
        + ".\n",
        description=f"teardown {op.target}",
    )
    return {"hub": op.target, "stopped": pids, "archived": str(archived) if archived else None}
