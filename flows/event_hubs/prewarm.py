"""Pre-warm: a Kubernetes cluster's user placeholders, the sum over its warm events.

Placeholders belong to the cluster, so N is always recomputed as the sum over the cluster's
warm events (`events.warm_hubs`), never incremented: creating an event raises it, expiring
one lowers it to what the others still need. They are set through the `deploy_support` flow
(under the cluster lock). On `local`, pre-warm is a no-op.
"""

from __future__ import annotations

from prefect import get_run_logger

from flows.deploy_fleet import _current_placeholders, deploy_support
from flows.operation import HubOperation
from hubfleet import events
from hubfleet.model import Cluster, Fleet, Provider
from tasks.cluster_session import cluster_session
from tasks.event_presence import helm_present
from tasks.event_schedule import all_extensions, utc_now
from tasks.helm import in_thread

#: A scheduled create run may start a moment before its time; within this it counts as due.
PREWARM_TOLERANCE_S = 60


async def set_placeholders(
    fleet: Fleet,
    cluster: Cluster,
    operator: str,
    dry_run: bool,
    *,
    include: str | None = None,
    exclude: str | None = None,
) -> str:
    """Set the cluster's user-placeholder replicas to the sum over its warm events.

    Changes (unless dry_run or already right): the support release, through the
    `deploy_support` flow (under the cluster lock). Returns what was (or would be) set.
    """
    present = await helm_present(cluster)
    warm = events.warm_hubs(
        cluster,
        utc_now(),
        present,
        await all_extensions(fleet),
        include=include,
        exclude=exclude,
    )
    total = sum(warm.values())
    async with cluster_session(cluster.name) as session:
        current = await in_thread(_current_placeholders, session.helm)
    why = ", ".join(f"{h}: {n}" for h, n in sorted(warm.items())) or "no warm event"
    if dry_run:
        line = f"would set {cluster.name}'s placeholders to {total} (now {current}; {why})"
    elif total == current:
        line = f"{cluster.name}'s placeholders stay at {total} ({why})"
    else:
        await deploy_support(cluster.name, operator=operator, placeholders=total)
        line = f"{cluster.name}'s placeholders {current} -> {total} ({why})"
    get_run_logger().info("pre-warm: %s", line)
    return line


# --- the flows ---------------------------------------------------------------------


async def prewarm_capacity(op: HubOperation, size: int, dry_run: bool) -> str:
    """Warm `size` placeholder pods for the event (Kubernetes); a no-op on `local`.

    On Kubernetes the cluster's placeholders become the sum over its warm events, this one
    included (see `set_placeholders`).
    """
    if op.cluster.provider is Provider.local:
        note = (
            f"no-op on local (a local hub spawns user servers as processes on demand; "
            f"{size} placeholder(s) would be warmed on Kubernetes)"
        )
        get_run_logger().info("pre-warm %s: %s", op.target, note)
        return note
    return await set_placeholders(op.fleet, op.cluster, op.operator, dry_run, include=op.hub.name)
