"""What the operations return: typed results whose outcome is a field.

A result is read by code (deploy_fleet classifies each hub's deploy, the reaper each
hub's expiry, the CLI prints it, tests assert) and stored by Prefect as the run's result;
none of them parses a message to learn what happened. `hubfleet.cli.common.plain` turns any
of them into plain data. One section per area, one class per flow's result.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from hubfleet.events import ReapVerdict
from hubfleet.health import Verdict


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- deploy -------------------------------------------------------------------------------


class HubDeployed(_Result):
    """deploy_hub's result: what it did to one hub (or, with dry_run, would do)."""

    hub: str  # cluster/hub
    action: str  # install, upgrade, unchanged, restart, ... (local hubs: the plan's action)
    dry_run: bool = False
    revision: int | None = None  # the helm release revision (Kubernetes hubs)
    from_version: str | None = None
    to_version: str | None = None
    duration_s: float | None = None
    health: str | None = None  # the gate's verdict: healthy, degraded, unchecked
    url: str | None = None  # local hubs: where the hub answers
    changes: list[dict[str, str]] = []  # dry run: object and change, per Kubernetes object


class Outcome(StrEnum):
    """What happened to one hub of a fleet run."""

    deployed = "deployed"
    rolled_back = "rolled back"  # failed its health gate; back on its previous revision
    failed = "failed"  # not deployed; helm's --atomic or nothing to roll back to
    blocked = "blocked"  # not tried: an earlier step of its cluster failed


class HubOutcome(_Result):
    """One hub's line of a fleet run: its outcome, and why when it is not `deployed`."""

    cluster: str
    hub: str
    from_version: str | None
    to_version: str
    outcome: Outcome
    why: str = ""
    duration_s: float = 0.0

    def row(self) -> dict[str, str | float]:
        """The hub's row in the run's table artifact."""
        return {
            "hub": f"{self.cluster}/{self.hub}",
            "from-version": self.from_version or "-",
            "to-version": self.to_version,
            "outcome": f"{self.outcome}: {self.why}" if self.why else str(self.outcome),
            "duration s": self.duration_s,
        }


class FleetRun(_Result):
    """deploy_fleet's and upgrade_fleet's result (also the data of a Failed run)."""

    outcomes: list[HubOutcome] = []
    orphans: dict[str, list[str]] = {}
    unreachable: dict[str, str] = {}
    critical_path_steps: int = 0
    dry_run: bool = False
    changes: list[dict[str, str | None]] = []  # dry run: the planned hub changes

    @property
    def not_deployed(self) -> list[HubOutcome]:
        return [o for o in self.outcomes if o.outcome is not Outcome.deployed]


class HubTornDown(_Result):
    """teardown_hub's result: what happened to the hub and its users' data (or, with
    dry_run, `would`: what it would do)."""

    hub: str  # cluster/hub
    dry_run: bool = False
    would: str = ""
    export: str | None = None  # where the homes went: objects, bytes, url (verified)
    revoked: str = ""  # what became of the ops token
    # Local hubs: the processes stopped, and where the hub's directory was archived.
    stopped: list[int] = []
    archived: str | None = None
    # Kubernetes hubs: the home volumes found, kept (archived), dropped, and any a storage
    # backend did not delete (name: why); what was removed.
    homes: list[str] = []
    archived_volumes: list[str] = []
    dropped_volumes: list[str] = []
    volumes_left: dict[str, str] = {}
    removed: str = ""


class SupportDeployed(_Result):
    """deploy_support's result: the cluster's support chart, its placeholder count, or
    (dry run) the changes it would make."""

    cluster: str
    placeholders: int | None = None
    dry_run: bool = False
    changes: list[dict[str, str]] = []


# --- health -------------------------------------------------------------------------------


class ProbeRow(_Result):
    """One level's probe of a health check."""

    level: str
    ok: bool
    status: str  # ok, warn, skip, FAIL
    latency_ms: float | None = None
    reason: str = ""
    detail: str = ""


class HubHealth(_Result):
    """check_hub_health's result: the verdict, why, and every probe."""

    hub: str  # cluster/hub
    url: str | None
    depth: str
    verdict: Verdict
    level: str  # the failing level ('' when healthy)
    reason: str
    latency_ms: float | None = None
    run: str = ""  # the check's flow run id
    checked_at: str = ""  # ISO time, UTC
    probes: list[ProbeRow] = []

    @property
    def down(self) -> bool:
        return self.verdict is Verdict.down

    def as_data(self) -> dict[str, Any]:
        """As plain JSON-able data: a row source of the sweep and history tables."""
        return self.model_dump(mode="json")


# --- event hubs ---------------------------------------------------------------------------


class ScheduleChanges(_Result):
    """The event runs scheduled, kept and cancelled (one line each: kind, hub, time)."""

    scheduled: list[str] = []
    kept: list[str] = []
    cancelled: list[str] = []


class EventHubCreated(ScheduleChanges):
    """create_event_hub's result: the deploy, the pre-warm, and the runs it scheduled."""

    hub: str  # cluster/hub
    deploy: HubDeployed
    prewarm: str  # what was (or would be) warmed, or when it will be
    dry_run: bool = False


class OrganizersReminded(_Result):
    """remind_event_organizers's result: where the reminder went (`skipped`: why not)."""

    hub: str  # cluster/hub
    sent: list[str] = []  # notification blocks
    mailed: list[str] = []  # organizers' addresses
    subject: str = ""
    skipped: str = ""  # e.g. "already past expiry": nothing was sent
    dry_run: bool = False


class EventHubExtended(ScheduleChanges):
    """extend_event_hub's result: the new end, and the runs moved to it."""

    hub: str  # cluster/hub
    new_end: datetime
    dry_run: bool = False


class Expiry(StrEnum):
    """What an expiry did to its hub."""

    expired = "expired"  # exported (per data_policy) and torn down
    already_removed = "already removed"  # nothing left but its schedule
    would_expire = "would expire"  # dry run


class ExportSummary(_Result):
    """Where an event's homes went, as verified by listing the destination."""

    url: str
    objects: int
    bytes: int


class EventHubExpired(_Result):
    """expire_event_hub's result: its outcome; what was exported, removed and lowered."""

    hub: str  # cluster/hub
    outcome: Expiry
    dry_run: bool = False
    would: str = ""  # dry run: the plan, in words
    started: datetime | None = None
    export: ExportSummary | None = None  # None: nothing exported (data_policy: delete)
    homes: list[str] = []
    revoked: str = ""  # what became of the ops token
    removed: HubTornDown | None = None  # teardown_hub's result
    placeholders: str | None = None  # Kubernetes: the cluster's placeholders afterwards
    cancelled: list[str] = []  # the hub's other scheduled runs (ids)
    mailed: list[str] = []  # organizers told

    @property
    def expired(self) -> bool:
        return self.outcome is Expiry.expired


class Reaped(StrEnum):
    """What the reaper did with one event hub: a verdict it left alone, or its expiry."""

    fine = ReapVerdict.fine.value
    gone = ReapVerdict.gone.value
    overdue_create = ReapVerdict.overdue_create.value
    unobserved = ReapVerdict.unobserved.value
    expired = "expired"
    would_expire = "would expire"
    failed = "failed"


class ReaperRun(_Result):
    """reap_expired_event_hubs's result: each event hub's outcome, overdue creations, and
    each Kubernetes cluster's placeholders."""

    hubs: dict[str, Reaped] = {}  # cluster/hub: outcome
    failures: dict[str, str] = {}  # cluster/hub or cluster: why its expiry/pre-warm failed
    overdue: list[str] = []
    placeholders: dict[str, str] = {}  # cluster: what was (or would be) set
    dry_run: bool = False


class EventSchedulesSynced(ScheduleChanges):
    """sync_event_schedules's result: the runs scheduled, kept and cancelled."""

    dry_run: bool = False


# --- backup -------------------------------------------------------------------------------


class HubBackedUp(_Result):
    """backup_hub's result: the verified copy, what retention deleted; or why none was
    made (`reason`), or (dry run) what would be done."""

    hub: str  # cluster/hub
    backed_up: bool
    reason: str = ""  # why not backed up, e.g. "not deployed"
    dry_run: bool = False
    would: str = ""
    url: str | None = None  # the copy
    stamp: str | None = None  # the copy's time, its name
    users: list[str] = []
    db: list[str] = []  # the hub database's files
    objects: int = 0
    bytes: int = 0
    pruned: list[str] = []  # older copies deleted (stamps)


class FleetBackedUp(_Result):
    """backup_fleet's result: each hub's backup, and the hubs whose backup failed (why)."""

    hubs: dict[str, HubBackedUp] = {}
    failed: dict[str, str] = {}


class RestoreRow(_Result):
    """One user's part of a restore: the files the copy holds (locally: and what differs)."""

    user: str
    files: int
    bytes: int
    missing_now: list[str] = []
    differ_now: list[str] = []


class HubRestored(_Result):
    """restore_hub's result: the copy, the homes and files written, the servers stopped;
    or (dry run) the plan."""

    hub: str  # cluster/hub
    stamp: str  # which backup copy (its time, its name)
    dry_run: bool = False
    would: str = ""
    plan: list[RestoreRow] = []
    users: list[str] = []  # homes restored
    files: int = 0
    stopped: list[str] = []  # user servers stopped first (Kubernetes)


# --- credentials --------------------------------------------------------------------------


class Rotated(_Result):
    """rotate_credential's result: what a successful rotation did (no secrets)."""

    kind: str
    owner: str
    old: str
    new: str
    verified_as: str
    switched: list[str]
    cleaned: list[str]


class RotationFailure(_Result):
    """A credential whose rotation failed (it was rolled back, or the error says what not)."""

    credential: str
    error: str


class CredentialsRotated(_Result):
    """rotate_credentials's result: what was rotated (or, dry run, would be) in `scope`."""

    scope: str
    dry_run: bool = False
    would_rotate: list[str] = []
    rotated: list[Rotated] = []
    skipped: int = 0
    hub_secrets: list[str] = []  # hubs whose secrets were (or would be) rotated
    warning: str = ""


# --- customization ------------------------------------------------------------------------


class HubCustomized(_Result):
    """customize_hub's result: the change (a patch of the hub's values file), where it was
    committed and its deploy; `changed` false when the request changed nothing."""

    hub: str  # cluster/hub
    changed: bool
    dry_run: bool = False
    patch: str = ""
    branch: str | None = None
    commit: str | None = None
    deploy: HubDeployed | None = None


# --- locks --------------------------------------------------------------------------------


class HubUnlocked(_Result):
    """unlock_hub's result: whether the hub was locked, by whom, and whether it was freed."""

    hub: str  # cluster/hub
    locked: bool
    unlocked: bool
    holder: str | None = None  # the run that held it (ended), when known
    dry_run: bool = False


# --- clusters -----------------------------------------------------------------------------


class PlanSummary(BaseModel):
    """What a saved Terraform plan would do, by resource address."""

    cluster: str
    create: list[str] = []
    update: list[str] = []
    replace: list[str] = []
    destroy: list[str] = []
    drifted: list[str] = []  # changed outside terraform, seen while refreshing

    @property
    def has_changes(self) -> bool:
        return bool(self.create or self.update or self.replace or self.destroy)

    @property
    def needs_approval(self) -> bool:
        """Anything destroyed or replaced loses data or capacity: a human must agree."""
        return bool(self.replace or self.destroy)

    def counts(self) -> str:
        return (
            f"{len(self.create)} to create, {len(self.update)} to update, "
            f"{len(self.replace)} to replace, {len(self.destroy)} to destroy"
        )

    def to_markdown(self, title: str) -> str:
        rows = [
            ("create", self.create),
            ("update", self.update),
            ("replace", self.replace),
            ("destroy", self.destroy),
            ("drifted", self.drifted),
        ]
        lines = [f"# {title}", "", f"**{self.counts()}**", "", "| action | resource |", "|---|---|"]
        lines += [f"| {action} | `{addr}` |" for action, addrs in rows for addr in addrs]
        if not self.has_changes:
            lines.append("| (none) | no changes |")
        return "\n".join(lines) + "\n"


class ClusterProvisioned(_Result):
    """provision_cluster's result: the plan, the approval if one was asked, what applied."""

    cluster: str
    action: str  # plan or apply (a dry run plans)
    plan: PlanSummary
    needs_approval: bool = False
    approved: bool | None = None  # None: no approval was asked
    reason: str | None = None  # the approver's
    applied: bool = False
    outputs: dict[str, Any] = {}  # Terraform's non-sensitive outputs
    server: str | None = None  # the API server stored in the ClusterAccess block
    support_chart: str | None = None


class ClusterDestroyed(_Result):
    """destroy_cluster's result: the destroy plan, the data stores it removes, the
    approval, and whether it was destroyed."""

    cluster: str
    plan: PlanSummary
    data_stores: list[str] = []  # what the destroy removes with the cluster
    destroyed: bool = False
    approved: bool | None = None  # None: not asked (dry run)
    reason: str | None = None


class Drift(StrEnum):
    """One cluster against its Terraform."""

    in_sync = "in sync"
    drifted = "drifted"
    error = "error"  # could not be planned


class ClusterDrift(_Result):
    """One cluster's line of detect_drift."""

    cluster: str
    status: Drift
    changes: str = ""  # drifted: the counts and addresses; error: why

    def row(self) -> dict[str, str]:
        """The cluster's row in the drift table artifact."""
        return {"cluster": self.cluster, "status": str(self.status), "changes": self.changes}


class FleetDrift(_Result):
    """detect_drift's result: every cluster with a `terraform:` section."""

    clusters: list[ClusterDrift] = []

    def of(self, status: Drift) -> list[str]:
        return [c.cluster for c in self.clusters if c.status is status]


# --- report -------------------------------------------------------------------------------


class ReportIncident(_Result):
    """A window in which a hub was not healthy in consecutive sweeps."""

    hub: str
    start: str  # ISO time
    end: str | None  # None: still open
    minutes: float | None
    cause: str
    sweeps: int


class FleetReportPublished(_Result):
    """publish_fleet_report's result: where the report went, its window and incidents,
    and the whole report as `hubfleet report --format json` prints it."""

    artifact: str  # the artifact's key
    since: str
    start: str  # ISO time
    end: str
    incidents: list[ReportIncident] = []
    mttr_minutes: float | None = None
    report: dict[str, Any] = {}


# --- check_fleet_health (feat/sweep-scale) -----------------------------------------------


class HealthSweep(_Result):
    """check_fleet_health's result: one sweep's verdicts. Every hub's row (verdict, level,
    reason, latency, streak) is in the run's `health-sweep-<depth>` table artifact; this
    keeps the counts and the hubs that need a look."""

    depth: str
    hubs: int  # hubs swept
    counts: dict[str, int] = {}  # verdict -> hubs
    unhealthy: list[dict[str, Any]] = []  # the rows of the hubs not healthy
    alerted: list[str] = []  # hubs whose streak reached alert_after in this sweep
    recovered: list[str] = []  # hubs healthy again after an alert
    changes: list[str] = []  # what changed since each hub's last sweep
