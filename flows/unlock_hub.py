"""unlock_hub: free a hub's lock that no live run holds (`hubfleet unlock CLUSTER/HUB`).

Locks free themselves: a dead holder's lease runs out within tasks.locks.LEASE_SECONDS.
This is for what leases cannot cover (a lock taken before leases were kept on disk, or
lease files lost). It refuses while the holder is running, and while a finished holder's
lease can still run out by itself (freeing the slot twice could let two runs in).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.runtime import flow_run

from flows.operation import begin_hub
from hubfleet.errors import HubfleetError
from hubfleet.results import HubUnlocked
from tasks.locks import LEASE_SECONDS, cluster_limit, describe_run, holders, hub_limit

#: After its holder ended, a lease may live this long (its length plus the repossessor loop).
LEASE_GRACE = timedelta(seconds=LEASE_SECONDS + 30)


class LockHeld(HubfleetError):
    """The lock's holder is alive (or its lease has not run out); nothing was changed."""


@flow(name="unlock_hub", flow_run_name="unlock_hub {cluster}/{hub}")
async def unlock_hub(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> HubUnlocked:
    """Free `cluster/hub`'s lock when no live run holds it."""
    op = await begin_hub("unlock_hub", cluster, hub, operator)
    name = hub_limit(cluster, hub)
    me = flow_run.get_id()
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots == 0:
            return HubUnlocked(hub=op.target, locked=False, unlocked=False, dry_run=dry_run)
        runs = [r for r in await holders(name, client) if str(r.id) != me]
        live = [r for r in runs if r.state and not r.state.is_final()]
        if live:
            raise LockHeld(
                f"{op.target} is locked by {describe_run(live[0])}, which has not ended; "
                "cancel that run (Prefect UI) if it is stuck, and its lock is freed. "
                "Nothing was changed."
            )
        ended = max((r.end_time for r in runs if r.end_time), default=None)
        if ended and datetime.now(UTC) - ended < LEASE_GRACE:
            raise LockHeld(
                f"{op.target}'s lock was held by {describe_run(runs[0])}; its lease runs out "
                f"by {(ended + LEASE_GRACE):%H:%M:%S} UTC and frees the lock by itself. "
                "Nothing was changed."
            )
        holder = describe_run(runs[0]) if runs else None
        if dry_run:
            return HubUnlocked(
                hub=op.target, locked=True, unlocked=False, holder=holder, dry_run=True
            )
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(active_slots=0)
        )
        shared = await client.read_global_concurrency_limit_by_name(cluster_limit(cluster))
        await client.update_global_concurrency_limit(
            shared.name,
            GlobalConcurrencyLimitUpdate(
                active_slots=max(0, shared.active_slots - limit.active_slots)
            ),
        )
    get_run_logger().warning("unlocked %s (was held by %s)", op.target, holder)
    return HubUnlocked(hub=op.target, locked=True, unlocked=True, holder=holder)
