"""Event hubs, decided: when each is created, reminded and expired, and what may be expired.

Pure functions of the fleet model, the clock and what was observed (no Prefect, no I/O), so
every rule is unit-tested. The safety rule lives here: `refuse_unless_expirable` is the one
gate every expiry passes, whatever its input, and it only lets through `kind: event` hubs
whose (effective) end has passed.

An extension (`extend_event_hub`) is recorded beside the fleet, not in git: it holds the new
end and the fleet end it extended. If the fleet's end is edited afterwards, the fleet wins
again: git stays the source of truth, and an extension is only a temporary override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from hubfleet.errors import HubfleetError
from hubfleet.model import Cluster, DataPolicy, EventSpec, Fleet, Hub, HubKind, Provider

#: The kinds of run hubfleet schedules for an event hub.
CREATE, REMIND, EXPIRE = "create", "remind", "expire"


class NotExpirable(HubfleetError):
    """An expiry was refused: not an event hub, or its event is not over. Nothing changed."""


class EventRefused(HubfleetError):
    """An event operation was refused because of the hub or its spec. Nothing changed."""


@dataclass(frozen=True)
class Extension:
    """An end moved by `extend_event_hub`, valid while the fleet's end is `fleet_end`."""

    new_end: datetime
    fleet_end: datetime

    def to_json(self) -> dict[str, str]:
        return {"new_end": self.new_end.isoformat(), "fleet_end": self.fleet_end.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Extension:
        return cls(
            datetime.fromisoformat(data["new_end"]), datetime.fromisoformat(data["fleet_end"])
        )


def effective_end(spec: EventSpec, extension: Extension | None) -> datetime:
    """The end that counts: an extension's, unless the fleet's end changed since it was made."""
    if extension is not None and extension.fleet_end == spec.end:
        return extension.new_end
    return spec.end


def event_spec(cluster: Cluster, hub: Hub) -> EventSpec:
    """The hub's event spec, or a refusal naming the hub (standing hubs have none)."""
    if hub.kind is not HubKind.event or hub.event is None:
        raise NotExpirable(
            f"{cluster.name}/{hub.name} is a {hub.kind.value} hub, not an event hub; event "
            "operations only ever act on hubs with kind: event. Nothing was changed."
        )
    return hub.event


def refuse_unless_expirable(
    cluster: Cluster, hub: Hub, now: datetime, extension: Extension | None = None
) -> datetime:
    """The safety rule: only an event hub past its end may be expired. Returns that end.

    Raises `NotExpirable` for a standing hub (whatever the caller asked) and for an event
    hub whose effective end (its fleet end, or an extension of it) is still ahead.
    """
    spec = event_spec(cluster, hub)
    end = effective_end(spec, extension)
    if now < end:
        raise NotExpirable(
            f"{cluster.name}/{hub.name}: the event ends {end.isoformat()}, which is "
            f"{_human(end - now)} from now; an event hub is expired only after its end. "
            "To end it sooner, change `end` in the fleet. Nothing was changed."
        )
    return end


@dataclass(frozen=True)
class Times:
    """When things happen to one event hub (all aware datetimes)."""

    create_at: datetime  # deploy and pre-warm: start - prewarm lead time
    start: datetime
    end: datetime  # effective end
    expire_at: datetime  # end + grace
    reminders: tuple[tuple[timedelta, datetime], ...]  # (offset before expiry, when)


def event_times(spec: EventSpec, extension: Extension | None = None) -> Times:
    """Create, reminder and expiry times of an event, from its spec (and any extension)."""
    end = effective_end(spec, extension)
    lead = spec.prewarm.lead_time if spec.prewarm else timedelta(0)
    expire_at = end + spec.grace
    reminders = tuple(
        sorted(((off, expire_at - off) for off in set(spec.reminders)), key=lambda r: r[1])
    )
    return Times(spec.start - lead, spec.start, end, expire_at, reminders)


def prewarm_size(spec: EventSpec) -> int:
    """Placeholder pods to warm: the pre-warm size, else the expected attendees."""
    if spec.prewarm and spec.prewarm.size is not None:
        return spec.prewarm.size
    return spec.attendees


def warm_hubs(
    cluster: Cluster,
    now: datetime,
    present: dict[str, bool],
    extensions: dict[tuple[str, str], Extension] | None = None,
    *,
    include: str | None = None,
    exclude: str | None = None,
) -> dict[str, int]:
    """The event hubs of `cluster` whose capacity should be warm now: hub -> placeholders.

    Placeholders belong to the cluster (one Deployment of the support chart), so the count
    deployed is the sum of this over the cluster's events. An event is warm from its
    creation time (start - pre-warm lead time) until its (effective) end, while its hub is
    `present` (deployed). `include` counts a hub being created now whatever the clock says;
    `exclude` drops a hub being expired. Standing hubs never count.
    """
    extensions = extensions or {}
    warm: dict[str, int] = {}
    for hub in cluster.hubs:
        if hub.kind is not HubKind.event or hub.event is None or hub.name == exclude:
            continue
        times = event_times(hub.event, extensions.get((cluster.name, hub.name)))
        if hub.name == include or (present.get(hub.name) and times.create_at <= now < times.end):
            warm[hub.name] = prewarm_size(hub.event)
    return warm


def idempotency_key(kind: str, cluster: str, hub: str, when: datetime, extra: str = "") -> str:
    """One key per (what, hub, when): scheduling the same run twice returns the first one."""
    at = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"hubfleet:event:{kind}:{cluster}/{hub}:{at}" + (f":{extra}" if extra else "")


def local_time(when: datetime, zone: str | None) -> str:
    """`when` as organizers read it: in the event's time zone if set, else with its offset."""
    shown = when.astimezone(ZoneInfo(zone)) if zone else when
    return shown.strftime("%Y-%m-%d %H:%M %Z").strip() if zone else shown.isoformat()


# --- the schedule: what runs should exist ------------------------------------------------


@dataclass(frozen=True)
class WantedRun:
    """A run hubfleet wants scheduled for an event hub."""

    kind: str  # create | remind | expire
    cluster: str
    hub: str
    at: datetime
    key: str
    offset: timedelta | None = None  # reminders: how long before expiry


@dataclass(frozen=True)
class ScheduledRun:
    """A scheduled (not yet started) run found in Prefect."""

    id: str
    kind: str
    cluster: str
    hub: str
    at: datetime
    key: str | None


@dataclass
class SchedulePlan:
    """What to change so the scheduled runs match the fleet."""

    schedule: list[WantedRun] = field(default_factory=list)  # missing: create them
    keep: list[ScheduledRun] = field(default_factory=list)  # already right
    cancel: list[ScheduledRun] = field(default_factory=list)  # stale: cancel them


def wanted_runs(
    cluster: str,
    hub: str,
    spec: EventSpec,
    now: datetime,
    *,
    extension: Extension | None = None,
    include_create: bool = True,
    running: bool | None = None,
) -> list[WantedRun]:
    """The runs one event hub should have scheduled at `now`.

    Expiry always (a past expiry is scheduled now: the hub is overdue). Reminders only while
    ahead. Creation at start - lead time if that is ahead; if it has passed, the event is not
    over and the hub is observed not running, creation is scheduled now (late beats never);
    unobserved hubs (`running is None`) are left to the reaper's overdue report.
    """
    times = event_times(spec, extension)
    runs: list[WantedRun] = []
    if include_create and now < times.end:
        if times.create_at > now:
            runs.append(
                WantedRun(
                    CREATE,
                    cluster,
                    hub,
                    times.create_at,
                    idempotency_key(CREATE, cluster, hub, times.create_at),
                )
            )
        elif running is False:
            runs.append(
                WantedRun(
                    CREATE,
                    cluster,
                    hub,
                    now,
                    idempotency_key(CREATE, cluster, hub, times.create_at, "late"),
                )
            )
    for offset, at in times.reminders:
        if at > now:
            runs.append(
                WantedRun(
                    REMIND,
                    cluster,
                    hub,
                    at,
                    idempotency_key(REMIND, cluster, hub, at, _iso(offset)),
                    offset,
                )
            )
    runs.append(
        WantedRun(
            EXPIRE,
            cluster,
            hub,
            max(times.expire_at, now),
            idempotency_key(EXPIRE, cluster, hub, times.expire_at),
        )
    )
    return runs


def plan_schedule(wanted: list[WantedRun], scheduled: list[ScheduledRun]) -> SchedulePlan:
    """Match wanted runs with scheduled ones by idempotency key; the rest are stale."""
    plan = SchedulePlan()
    wanted_keys = {w.key for w in wanted}
    by_key: dict[str, ScheduledRun] = {}
    for run in scheduled:
        # `key#n` is a re-scheduled run of `key` (its first run was cancelled).
        key = run.key.split("#", 1)[0] if run.key else None
        if key and key in wanted_keys and key not in by_key:
            by_key[key] = run
        else:
            plan.cancel.append(run)  # stale, or a duplicate of a kept run
    for want in wanted:
        if want.key in by_key:
            plan.keep.append(by_key[want.key])
        else:
            plan.schedule.append(want)
    return plan


def fleet_wanted_runs(
    fleet: Fleet,
    now: datetime,
    extensions: dict[tuple[str, str], Extension],
    running: dict[tuple[str, str], bool | None],
) -> list[WantedRun]:
    """Every run the fleet's event hubs should have scheduled at `now`."""
    runs: list[WantedRun] = []
    for cluster in fleet.clusters:
        for hub in cluster.hubs:
            if hub.kind is HubKind.event and hub.event is not None:
                key = (cluster.name, hub.name)
                runs += wanted_runs(
                    cluster.name,
                    hub.name,
                    hub.event,
                    now,
                    extension=extensions.get(key),
                    running=running.get(key),
                )
    return runs


# --- the reaper ------------------------------------------------------------------------


class ReapVerdict(StrEnum):
    expire = "expire"  # past end + grace and still present: expire it now
    overdue_create = "overdue-create"  # should be up by now and is not
    fine = "fine"
    gone = "gone"  # over and already removed
    unobserved = "unobserved"  # hubfleet cannot see this provider's hubs yet


@dataclass(frozen=True)
class ReapItem:
    cluster: str
    hub: str
    verdict: ReapVerdict
    reason: str


def reap_plan(
    fleet: Fleet,
    now: datetime,
    present: dict[tuple[str, str], bool | None],
    extensions: dict[tuple[str, str], Extension] | None = None,
) -> list[ReapItem]:
    """What the hourly reaper does with each event hub. Standing hubs never appear.

    `present[(cluster, hub)]`: True if the hub exists (running or not), False if it is
    gone, None if it cannot be observed.
    """
    extensions = extensions or {}
    items: list[ReapItem] = []
    for cluster in fleet.clusters:
        for hub in cluster.hubs:
            if hub.kind is not HubKind.event or hub.event is None:
                continue
            key = (cluster.name, hub.name)
            times = event_times(hub.event, extensions.get(key))
            seen = present.get(key)
            if seen is None:
                verdict, why = (
                    ReapVerdict.unobserved,
                    f"provider {cluster.provider.value}: not observed",
                )
            elif now >= times.expire_at and seen:
                late = _human(now - times.expire_at)
                verdict, why = ReapVerdict.expire, f"expiry was due {late} ago and it still exists"
            elif now >= times.expire_at:
                verdict, why = ReapVerdict.gone, "expired and removed"
            elif times.create_at <= now < times.end and not seen:
                late = _human(now - times.create_at)
                verdict, why = (
                    ReapVerdict.overdue_create,
                    f"creation was due {late} ago; not present",
                )
            else:
                verdict, why = ReapVerdict.fine, "on schedule"
            items.append(ReapItem(cluster.name, hub.name, verdict, why))
    return items


# --- export --------------------------------------------------------------------------


def export_url(cluster: Cluster, hub: Hub, default_root: str, stamp: str) -> str | None:
    """Where the hub's homes go on expiry, or None when data_policy is delete.

    A cloud cluster must name a bucket (`event.export.url`); a local cluster defaults to
    a directory under `default_root`. Each expiry writes under its own `<cluster>/<hub>/<stamp>`.
    """
    spec = event_spec(cluster, hub)
    if spec.data_policy is DataPolicy.delete:
        return None
    if spec.export is not None:
        base = spec.export.url.rstrip("/")
        if cluster.provider is not Provider.local and base.startswith("file:"):
            raise EventRefused(
                f"{cluster.name}/{hub.name}: event.export.url {spec.export.url!r} is a local "
                "directory, but the homes of a Kubernetes hub are exported by a Job in the "
                "cluster, which cannot write there; use s3://, gs:// or az:// "
                "(with event.export.credentials). Nothing was changed."
            )
    elif cluster.provider is Provider.local:
        base = f"file://{default_root.rstrip('/')}"
    else:
        raise EventRefused(
            f"{cluster.name}/{hub.name}: data_policy is export but event.export is not set; "
            "add e.g. `export: {url: s3://bucket/prefix, credentials: <block>}` to the hub's "
            "event (a cluster on a cloud provider has no default export location). "
            "Nothing was changed."
        )
    return f"{base}/{cluster.name}/{hub.name}/{stamp}"


def _iso(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"PT{seconds}S"


def _human(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
