"""What every operation does first: load the fleet, find its target, record the run.

Self-hosted Prefect does not record who started a run; hubfleet does, as tags on the run
(`operator:<who>`, `revision:<fleet commit>`) beside `op:`, `cluster:` and `hub:`.

Who started a run comes from how it was created, never from what the creator says:
- a deployment run (worker): `schedule` for a scheduled run, `automation:<name>` or the
  Prefect Cloud actor from the run's `created_by`, else `unknown(ui/api)`. The deployments'
  parameter schema has no `operator`, so the server refuses one at creation;
- a run in the CLI's own process: the local user ($USER), or `--operator NAME` from that
  same user's shell, checked: a plain name of at most 64 characters that is not one of the
  reserved values above (the CLI refuses those).
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from hubfleet.audit import UNKNOWN_UI_OPERATOR, OperatorRefused, check_operator
from hubfleet.loader import load_fleet
from hubfleet.model import Cluster, Fleet, Hub
from hubfleet.paths import fleet_dir
from tasks.locks import passed_down_holds


@dataclass(frozen=True, kw_only=True)
class FleetOperation:
    """A run on the whole fleet, or on several of its clusters (`clusters`, none: all)."""

    name: str
    fleet: Fleet
    operator: str
    revision: str
    clusters: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return ", ".join(self.clusters) if self.clusters else "the fleet"


@dataclass(frozen=True, kw_only=True)
class ClusterOperation:
    """A run on one cluster."""

    name: str
    fleet: Fleet
    operator: str
    revision: str
    cluster: Cluster

    @property
    def target(self) -> str:
        return self.cluster.name


@dataclass(frozen=True, kw_only=True)
class HubOperation:
    """A run on one hub of one cluster."""

    name: str
    fleet: Fleet
    operator: str
    revision: str
    cluster: Cluster
    hub: Hub

    @property
    def target(self) -> str:
        return f"{self.cluster.name}/{self.hub.name}"


#: Tags of the event runs hubfleet schedules itself (flows/event_hubs/): who scheduled it.
SCHEDULE_TAG = "hubfleet:event-schedule"
SCHEDULED_BY = "scheduled-by:"


def operator_name(given: str | None) -> str:
    """Who started an in-process run: `given` (a plain name), else $USER.

    The CLI refuses the reserved names (`--operator schedule`); code running in-process
    (hubfleet's own, or a test simulating a scheduled sweep) may record them.
    """
    if given is None:
        return os.environ.get("USER") or getpass.getuser()
    return check_operator(given, allow_reserved=True)


def deployment_run_operator(run: FlowRun) -> str:
    """Who started a deployment run that names no operator: its schedule, else unknown."""
    if run.auto_scheduled:
        return "schedule"
    if SCHEDULE_TAG in run.tags:
        by = [t.removeprefix(SCHEDULED_BY) for t in run.tags if t.startswith(SCHEDULED_BY)]
        return f"schedule:{by[0] if by else 'unknown'}"
    created_by = getattr(run, "created_by", None)
    if created_by is not None and created_by.type:
        return f"{created_by.type.lower()}:{created_by.display_value or created_by.id}"
    return UNKNOWN_UI_OPERATOR


#: In a fleet copied out of git (the worker image, testenv/hubimages.py): the
#: commit it was copied from, written when the copy was made.
REVISION_FILE = ".hubfleet-revision"


def fleet_revision(root: Path) -> str:
    """The registry's git commit, or 'uncommitted' if it has changes or no git history.

    A fleet outside any git checkout (an image has no git) answers with the commit its
    `.hubfleet-revision` file records, if it has one.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )

    def recorded() -> str:
        try:
            value = (root / REVISION_FILE).read_text().strip()
        except OSError:
            return "uncommitted"
        return value if value.isalnum() and len(value) <= 40 else "uncommitted"

    try:
        head = git("log", "-1", "--format=%h", "--", ".")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.TimeoutExpired):
        return recorded()
    if head.returncode != 0 and "not a git repository" in head.stderr:
        return recorded()
    if head.returncode != 0 or not head.stdout.strip() or dirty.stdout.strip():
        return "uncommitted"
    return head.stdout.strip()


_fleet_cache: dict[Path, tuple[tuple[tuple[str, int], ...], Fleet]] = {}


def current_fleet() -> Fleet:
    """The validated fleet, re-read only when a file under it changed.

    A fleet run starts hundreds of hub runs in one process; validating the registry for
    each was a quarter of the orchestration overhead. Any edit (mtime) invalidates.
    """
    root = fleet_dir().resolve()
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()))
    cached = _fleet_cache.get(root)
    if cached and cached[0] == stamp:
        return cached[1]
    fleet = load_fleet(root)
    _fleet_cache[root] = (stamp, fleet)
    return fleet


#: The fleet (and its revision) a fleet run read, passed down to the hub and cluster runs
#: it calls in this process: they act on the fleet it planned from, and 5,000 hub runs do
#: not each re-scan the registry and run git (O(hubs) each: O(hubs^2) per fleet run).
_passed_fleet: ContextVar[tuple[Path, Fleet, str] | None] = ContextVar(
    "hubfleet_passed_fleet", default=None
)


def _fleet_and_revision() -> tuple[Fleet, str | None]:
    """The fleet a calling fleet run passed down (and its revision), else the current one."""
    passed = _passed_fleet.get()
    if passed is not None and passed[0] == fleet_dir().resolve():
        return passed[1], passed[2]
    return current_fleet(), None


@contextmanager
def fleet_passed_down(op: FleetOperation) -> Iterator[None]:
    """Within this block, the hub and cluster runs the fleet run calls (in this process)
    act on the fleet it planned from and its revision, without re-reading it. Only there:
    a flow started later in the same process (a test, `serve`) reads the fleet as it is
    then (a fleet run's fleet kept for the whole process was read by the next run)."""
    token = _passed_fleet.set((op.fleet.root.resolve(), op.fleet, op.revision))
    try:
        yield
    finally:
        _passed_fleet.reset(token)


def run_tags(op: str, cluster: str, hub: str | None, operator: str, revision: str) -> list[str]:
    tags = [f"op:{op}", f"cluster:{cluster}", f"operator:{operator}", f"revision:{revision}"]
    if hub:
        tags.append(f"hub:{cluster}/{hub}")
    return tags


async def _tag_current_run(operator: str | None, tags_for: Callable[[str], list[str]]) -> str:
    """Add `tags_for(who)` to the current flow run's tags; return who started it.

    A deployment run was started by its schedule, an automation or from the UI/API (see
    `deployment_run_operator`) whatever its parameters say; an in-process run by `operator`
    (checked) or $USER. A subflow inherits its parent's operator, passed down as `operator`.
    """
    run_id = flow_run.get_id()
    who = None
    if run_id:
        async with get_client() as client:
            # The engine's copy of the run (read when it started, kept current by hubfleet's
            # own tag updates): no read per run; another process's copy is read.
            ctx = FlowRunContext.get()
            local = ctx.flow_run if ctx is not None else None
            if local is not None and str(local.id) == str(run_id):
                run = local
            else:
                run = await client.read_flow_run(UUID(run_id))
            if run.parent_task_run_id is not None:
                # A subflow: its parent passed its own operator down, or it inherits it.
                who = operator or await _parent_operator(client, run.parent_task_run_id)
            elif run.deployment_id is not None:
                if operator is not None:
                    raise OperatorRefused(
                        "a deployment run's operator comes from how it was created (schedule, "
                        "automation, UI/API), never from a parameter; remove 'operator'. "
                        "Nothing was run."
                    )
                who = deployment_run_operator(run)
            else:
                who = operator_name(operator)
            # Only this code says who: an `operator:` tag the creator attached is dropped.
            kept = {t for t in run.tags if not t.startswith("operator:")}
            tags = sorted(kept | set(tags_for(who)))
            if tags != sorted(run.tags):
                await client.update_flow_run(UUID(run_id), tags=tags)
            if local is not None and run is local:
                local.tags = tags
    return who if who is not None else operator_name(operator)


async def _parent_operator(client: Any, parent_task_run_id: UUID) -> str:
    """The `operator:` tag of the run a subflow was started from ($USER if it has none)."""
    task_run = await client.read_task_run(parent_task_run_id)
    if task_run.flow_run_id is not None:
        parent = await client.read_flow_run(task_run.flow_run_id)
        for tag in parent.tags:
            if tag.startswith("operator:"):
                return str(tag.removeprefix("operator:"))
    return operator_name(None)


async def _begin(
    fleet: Fleet,
    op: str,
    operator: str | None,
    target: str,
    tags: Callable[[str, str], list[str]],
    revision: str | None = None,
) -> tuple[str, str]:
    """What every `begin_*` does with the fleet it read (once): its revision (unless given),
    the run tagged with `tags(who, revision)`, one log line. Returns who started the run,
    and the revision."""
    revision = revision or fleet_revision(fleet.root)
    who = await _tag_current_run(operator, lambda who: tags(who, revision))
    get_run_logger().info("%s on %s by %s (fleet revision %s)", op, target, who, revision)
    return who, revision


async def begin_fleet(
    op: str,
    operator: str | None,
    clusters: list[str] | None = None,
    extra_tags: tuple[str, ...] = (),
    fleet: Fleet | None = None,
) -> FleetOperation:
    """Start an operation on the whole fleet or several clusters: the run is tagged with op,
    operator, revision, a `cluster:` tag per cluster (none for the whole fleet) and
    `extra_tags`. `fleet`: the current fleet, if the caller read it already to choose the
    clusters (so the run acts on the fleet it chose from)."""
    names = tuple(clusters or ())

    def tags(who: str, revision: str) -> list[str]:
        base = {t for t in run_tags(op, "-", None, who, revision) if t != "cluster:-"}
        return sorted(base | {f"cluster:{c}" for c in names} | set(extra_tags))

    target = ", ".join(names) if names else "the fleet"
    fleet = fleet or current_fleet()
    who, revision = await _begin(fleet, op, operator, target, tags)
    return FleetOperation(name=op, fleet=fleet, operator=who, revision=revision, clusters=names)


async def begin_cluster(op: str, cluster: str, operator: str | None) -> ClusterOperation:
    """Start an operation on one cluster. Raises (naming the fleet's clusters) on a bad name."""
    fleet, known = _fleet_and_revision()
    spec = fleet.cluster(cluster)
    who, revision = await _begin(
        fleet, op, operator, cluster, lambda who, rev: run_tags(op, cluster, None, who, rev), known
    )
    return ClusterOperation(name=op, fleet=fleet, operator=who, revision=revision, cluster=spec)


async def begin_hub(op: str, cluster: str, hub: str, operator: str | None) -> HubOperation:
    """Start an operation on one hub. Raises (naming what exists) on a bad cluster or hub.

    A hub run whose caller passed it the hub's lock (a fleet run's `group_locks`) is tagged
    `holds:<hub limit>` in the same update as its other tags."""
    fleet, known = _fleet_and_revision()
    cluster_spec = fleet.cluster(cluster)
    hub_spec = cluster_spec.hub(hub)
    holds = passed_down_holds(cluster, hub)
    who, revision = await _begin(
        fleet,
        op,
        operator,
        f"{cluster}/{hub}",
        lambda who, revision: run_tags(op, cluster, hub, who, revision) + holds,
        known,
    )
    return HubOperation(
        name=op, fleet=fleet, operator=who, revision=revision, cluster=cluster_spec, hub=hub_spec
    )
