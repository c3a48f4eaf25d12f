"""Who may change what at once: Prefect global concurrency limits, always `strict=True`.

Three kinds of limit per cluster (names use '.', which no DNS-safe hub or cluster name has,
so `a-b`/`c` and `a`/`b-c` can never collide):

* `hubfleet.hub.<cluster>.<hub>` (1 slot): one mutating operation per hub at a time.
* `hubfleet.cluster.<cluster>` (CLUSTER_SLOTS slots): a hub operation holds one slot, a
  cluster-level operation (support chart, provisioning) holds them all, so it excludes every
  hub operation on that cluster and they exclude it.
* `hubfleet.deploy.<cluster>` (`parallelism` slots): how many hubs a fleet run changes at
  once on the cluster.

`strict=True` everywhere: without it Prefect silently skips a missing limit and nothing is
locked. `ensure_concurrency_limits(fleet)` creates them (idempotent); `hubfleet setup` calls it.

A lock cannot outlive its holder: every slot is a lease the holding run renews while it
lives (LEASE_SECONDS); when the run crashes, is cancelled, or its process or machine dies,
the server's repossessor frees the slot once the lease runs out (at most LEASE_SECONDS plus
its 15 s loop). Leases are kept on disk by every server hubfleet starts (Prefect's
filesystem lease storage), so a server restart does not forget them and leave the slot
taken forever. Why leases rather than a holder-state check: they need no extra service and
free a lock even when nothing will ever report the holder's state (a lost machine).

While it holds a lock, a run carries the tag `holds:<limit>`, so a waiter can name the
holder and `hubfleet locks` can list who holds what. Waits are bounded by default
(LOCK_WAIT), except a fleet run's deploy slot, which is the fleet run's own queue.

A lock taken inside a flow run is passed down to the subflows that run calls: a subflow
asking for locks its caller already holds (event expiry calls `teardown_hub` under the hub
lock) runs under them instead of waiting for itself until the lock wait runs out. What is
held travels in a context variable, so only code called from the holder sees it; a lock
taken outside any flow run (a script, a test) is never passed down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet

#: Slots of a cluster limit; a cluster-level operation takes all of them.
CLUSTER_SLOTS = 1000


class LockTimeout(HubfleetError):
    """A lock was not free within the time allowed; nothing was changed."""


def hub_limit(cluster: str, hub: str) -> str:
    return f"hubfleet.hub.{cluster}.{hub}"


def cluster_limit(cluster: str) -> str:
    return f"hubfleet.cluster.{cluster}"


def deploy_limit(cluster: str) -> str:
    return f"hubfleet.deploy.{cluster}"


def _log(msg: str, *args: object) -> None:
    try:
        get_run_logger().info(msg, *args)
    except MissingContextError:
        pass


async def ensure_concurrency_limits(fleet: Fleet) -> list[str]:
    """Create or update every limit the fleet needs; returns their names. Idempotent."""
    wanted: dict[str, int] = {}
    for cluster in fleet.clusters:
        wanted[cluster_limit(cluster.name)] = CLUSTER_SLOTS
        wanted[deploy_limit(cluster.name)] = fleet.settings.parallelism
        for hub in cluster.hubs:
            wanted[hub_limit(cluster.name, hub.name)] = 1
    async with get_client() as client:
        for name, slots in wanted.items():
            await client.upsert_global_concurrency_limit_by_name(name, slots)
    return sorted(wanted)


#: A holder renews its lease while it lives; a crashed one (worker killed) frees the lock
#: when the lease runs out. Prefect's default (300 s) kept a hub locked 5 minutes after a
#: crash; 90 s leaves renewals ample slack on a loaded machine.
LEASE_SECONDS = 90.0
#: How long an operation waits for a hub or cluster lock unless told otherwise.
LOCK_WAIT = 1800.0
#: Tag of a run while it holds the limit named after it.
HOLDS = "holds:"


async def _mark_holder(names: list[str], holding: bool) -> None:
    """Add (or remove) `holds:<limit>` tags on the current flow run, if there is one."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    held = {HOLDS + name for name in names}
    async with get_client() as client:
        run = await client.read_flow_run(UUID(run_id))
        tags = set(run.tags) | held if holding else set(run.tags) - held
        await client.update_flow_run(UUID(run_id), tags=sorted(tags))


async def holders(limit: str, client: Any) -> list[Any]:
    """The runs that took `limit` most recently (newest first); a final one no longer holds
    it once its lease has run out."""
    return list(
        await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[HOLDS + limit])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=5,
        )
    )


def describe_run(run: Any) -> str:
    state = run.state.name if run.state else "unknown"
    return f"run {run.name!r} ({run.id}, {state})"


async def _busy_message(names: list[str], what: str, timeout: float) -> str:
    async with get_client() as client:
        found = [run for name in names[:1] for run in await holders(name, client)]
    live = [r for r in found if r.state and not r.state.is_final()]
    holder = (
        f"held by {describe_run(live[0])}"
        if live
        else f"last taken by {describe_run(found[0])}, whose lease has not run out yet"
        if found
        else "held by a run hubfleet cannot name (see `hubfleet locks`)"
    )
    return (
        f"{what} is busy: {holder}, for more than {timeout:g}s of waiting; retry when it "
        "ends, or see `hubfleet locks`. Nothing was changed."
    )


#: The limits the current flow run holds, visible to the subflows it calls (see above).
_held: ContextVar[frozenset[str]] = ContextVar("hubfleet_held_locks", default=frozenset())


@asynccontextmanager
async def _hold(
    names: list[str], occupy: int, what: str, timeout: float | None
) -> AsyncIterator[None]:
    if flow_run.get_id() and set(names) <= _held.get():
        _log("lock %s: already held by the calling run", what)
        yield
        return
    _log("waiting for lock: %s", what)
    try:
        async with concurrency(
            names,
            occupy=occupy,
            timeout_seconds=timeout,
            strict=True,
            lease_duration=LEASE_SECONDS,
        ):
            _log("holding lock: %s", what)
            await _mark_holder(names, True)
            passed = _held.set(_held.get() | set(names)) if flow_run.get_id() else None
            try:
                yield
            finally:
                if passed is not None:
                    _held.reset(passed)
                await _mark_holder(names, False)
    except TimeoutError:
        assert timeout is not None
        raise LockTimeout(await _busy_message(names, what, timeout)) from None
    _log("released lock: %s", what)


@asynccontextmanager
async def hub_lock(
    cluster: str, hub: str, timeout: float | None = None, fleet_slot: bool = False
) -> AsyncIterator[None]:
    """Exclusive right to change `cluster/hub` (and one shared slot of its cluster).

    fleet_slot: also hold one of the cluster's `parallelism` deploy slots (fleet runs), in
    the same acquisition: one lease to renew instead of two.
    """
    names = [hub_limit(cluster, hub), cluster_limit(cluster)]
    if fleet_slot:
        names.append(deploy_limit(cluster))
    what = f"hub {cluster}/{hub}" + (" + a deploy slot" if fleet_slot else "")
    if timeout is None and not fleet_slot:
        timeout = LOCK_WAIT
    async with _hold(names, 1, what, timeout):
        yield


@asynccontextmanager
async def cluster_lock(cluster: str, timeout: float | None = None) -> AsyncIterator[None]:
    """Exclusive right to change `cluster` itself: no hub operation runs on it meanwhile."""
    timeout = LOCK_WAIT if timeout is None else timeout
    async with _hold([cluster_limit(cluster)], CLUSTER_SLOTS, f"cluster {cluster}", timeout):
        yield


@asynccontextmanager
async def deploy_slot(cluster: str, timeout: float | None = None) -> AsyncIterator[None]:
    """One of the cluster's `parallelism` slots for a fleet run's hub change."""
    async with _hold([deploy_limit(cluster)], 1, f"deploy slot on {cluster}", timeout):
        yield


_ensured: set[tuple[str, ...]] = set()


async def ensure_concurrency_limits_once(fleet: Fleet) -> None:
    """`ensure_concurrency_limits` at most once per process and fleet shape, so a flow run
    on a fresh server works without `hubfleet setup`; locking itself stays strict (a limit
    deleted later makes acquisition fail loudly instead of silently not locking)."""
    from prefect.settings import PREFECT_API_URL

    key = (
        str(PREFECT_API_URL.value()),
        str(fleet.settings.parallelism),
        *sorted(f"{c.name}/{h.name}" for c in fleet.clusters for h in c.hubs),
    )
    if key not in _ensured:
        await ensure_concurrency_limits(fleet)
        _ensured.add(key)
