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

A fleet run takes its hubs' locks per group of at most `parallelism` hubs (`group_locks`:
two lease acquisitions for the group instead of one per hub) and passes them down to each
hub's `deploy_hub` run, which records `holds:<hub limit>` among the tags it is created
with (`passed_down_holds`), so `hubfleet locks` still names the hub run. Leases are taken,
renewed and released with the calling run's own API client, renewed on its event loop
(`_lease`): Prefect's `concurrency()` starts a client, a service thread and a renewal
thread with another client per acquisition, which was most of a fleet run's CPU per hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet

#: Slots of a cluster limit; a cluster-level operation takes all of them.
CLUSTER_SLOTS = 1000


class LockTimeout(HubfleetError):
    """A lock was not free within the time allowed; nothing was changed."""


class LockError(HubfleetError):
    """The lock service refused or failed (a limit missing, the server unavailable)."""


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


def limits_wanted(fleet: Fleet) -> dict[str, int]:
    """Every concurrency limit the fleet needs, with its slots."""
    wanted: dict[str, int] = {}
    for cluster in fleet.clusters:
        wanted[cluster_limit(cluster.name)] = CLUSTER_SLOTS
        wanted[deploy_limit(cluster.name)] = fleet.settings.parallelism
        for hub in cluster.hubs:
            wanted[hub_limit(cluster.name, hub.name)] = 1
    return wanted


async def ensure_concurrency_limits(fleet: Fleet) -> list[str]:
    """Create or update every limit the fleet needs; returns their names. Idempotent."""
    wanted = limits_wanted(fleet)
    async with get_client() as client:
        # One page read per 200 limits, then a write only for what is missing or different
        # (upserting each was a read per limit: 5,520 calls for a 5,000-hub fleet).
        existing: dict[str, int] = {}
        while page := await client.read_global_concurrency_limits(limit=200, offset=len(existing)):
            existing.update({lim.name: lim.limit for lim in page})
            if len(page) < 200:
                break
        for name, slots in wanted.items():
            if existing.get(name) != slots:
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
    """Add (or remove) `holds:<limit>` tags on the current flow run, if there is one.

    The run's tags are taken from the run context's copy (kept current by hubfleet's own
    updates: flows/operation.py tags a run the same way), one API call instead of two."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is None:
        return
    held = {HOLDS + name for name in names}
    tags = sorted(set(run.tags) | held if holding else set(run.tags) - held)
    async with get_client() as client:
        await client.update_flow_run(run.id, tags=tags)
    run.tags = tags


#: Renew a lease when this fraction of it has run (Prefect's own choice).
_RENEW_AFTER = 0.75


async def _increment(client: Any, names: list[str], occupy: int, holder: Any) -> Any:
    return await client.increment_concurrency_slots_with_lease(
        names=names,
        slots=occupy,
        mode="concurrency",
        lease_duration=LEASE_SECONDS,
        holder=holder,
    )


@asynccontextmanager
async def _lease(names: list[str], occupy: int, timeout: float | None) -> AsyncIterator[None]:
    """Hold `occupy` slots of every limit in `names` (all or none, one lease) until the
    block ends; strict: a limit that does not exist is an error, never a silent no-lock.

    Waits while the limits are full (the server answers 423 with Retry-After), at most
    `timeout` seconds (TimeoutError). The lease is renewed on this event loop with the
    caller's API client; if a renewal fails the error is logged and retried (the slots
    stay reserved until the lease runs out, LEASE_SECONDS after the last renewal)."""
    holder = None  # as Prefect's concurrency(): the server ties no run's state to the lease
    deadline = None if timeout is None else time.monotonic() + timeout
    async with get_client() as client:
        while True:
            try:
                response = await _increment(client, names, occupy, holder)
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise LockError(
                        f"the lock service refused {names} ({exc.response.status_code}: "
                        f"{exc.response.text[:200]}); nothing was changed"
                    ) from None
                wait = float(exc.response.headers.get("Retry-After", 1))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError from None
                    wait = min(wait, left)
                await asyncio.sleep(wait)
        data = response.json()
        lease_id = UUID(str(data["lease_id"]))
        found = {limit["name"] for limit in data.get("limits", [])}
        if set(names) - found:
            await client.release_concurrency_slots_with_lease(lease_id)
            raise LockError(
                f"concurrency limit(s) {sorted(set(names) - found)} do not exist: run "
                "`hubfleet setup` (or ensure_concurrency_limits) first; nothing was changed"
            )

        async def renew() -> None:
            while True:
                await asyncio.sleep(LEASE_SECONDS * _RENEW_AFTER)
                try:
                    await client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
                except Exception as exc:  # retried at the next interval
                    _log("renewing the lease of %s failed (retried): %s", names, exc)

        renewal = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewal.cancel()
            await asyncio.shield(client.release_concurrency_slots_with_lease(lease_id))


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
    names: list[str], occupy: int, what: str, timeout: float | None, mark: bool = True
) -> AsyncIterator[None]:
    if flow_run.get_id() and set(names) <= _held.get():
        _log("lock %s: already held by the calling run", what)
        yield
        return
    _log("waiting for lock: %s", what)
    try:
        async with _lease(names, occupy, timeout):
            _log("holding lock: %s", what)
            if mark:
                await _mark_holder(names, True)
            passed = _held.set(_held.get() | set(names)) if flow_run.get_id() else None
            try:
                yield
            finally:
                if passed is not None:
                    _held.reset(passed)
                if mark:
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
async def group_locks(cluster: str, hubs: list[str]) -> AsyncIterator[None]:
    """A fleet run's locks for a group of hubs it changes at once on `cluster`: each hub's
    lock, one cluster slot and one deploy slot per hub, passed down to the hubs'
    `deploy_hub` runs (whose `hub_lock(..., fleet_slot=True)` then runs under them).

    Two acquisitions, in a fixed order (the hubs, then the cluster and deploy slots: no
    operation holds cluster or deploy slots while it waits for a hub), each one lease.
    Waits without bound, as the fleet run's deploy slot always did (its own queue).
    The fleet run itself is not tagged `holds:`; each hub run is (`passed_down_holds`)."""
    hub_names = [hub_limit(cluster, hub) for hub in hubs]
    slots = [cluster_limit(cluster), deploy_limit(cluster)]
    what = f"{len(hubs)} hub(s) of {cluster} + {len(hubs)} deploy slot(s)"
    async with (
        _hold(hub_names, 1, f"hubs {', '.join(hubs)} of {cluster}", None, mark=False),
        _hold(slots, len(hubs), what, None, mark=False),
    ):
        yield


def passed_down_holds(cluster: str, hub: str) -> list[str]:
    """`holds:` tags for the hub's locks this run was passed by its caller (`group_locks`):
    set among the run's tags when it starts, so `hubfleet locks` names the hub's run."""
    names = [hub_limit(cluster, hub), cluster_limit(cluster)]
    held = _held.get()
    return [HOLDS + hub_limit(cluster, hub)] if set(names) <= held else []


@asynccontextmanager
async def deploy_slot(cluster: str, timeout: float | None = None) -> AsyncIterator[None]:
    """One of the cluster's `parallelism` slots for a fleet run's hub change."""
    async with _hold([deploy_limit(cluster)], 1, f"deploy slot on {cluster}", timeout):
        yield


_ensured: set[tuple[str, ...]] = set()
_shapes: dict[int, tuple[Fleet, tuple[str, ...]]] = {}


async def ensure_concurrency_limits_once(fleet: Fleet) -> None:
    """`ensure_concurrency_limits` at most once per process and fleet shape, so a flow run
    on a fresh server works without `hubfleet setup`; locking itself stays strict (a limit
    deleted later makes acquisition fail loudly instead of silently not locking)."""
    from prefect.settings import PREFECT_API_URL

    # The fleet's shape, computed once per fleet object (a fleet run's 5,000 hub runs share
    # one): sorting every hub per hub run was O(hubs^2) per fleet run.
    shape = _shapes.get(id(fleet))
    if shape is None or shape[0] is not fleet:
        names = sorted(f"{c.name}/{h.name}" for c in fleet.clusters for h in c.hubs)
        shape = (fleet, (str(fleet.settings.parallelism), *names))
        _shapes[id(fleet)] = shape
    key = (str(PREFECT_API_URL.value()), *shape[1])
    if key not in _ensured:
        await ensure_concurrency_limits(fleet)
        _ensured.add(key)
