"""What the deploy operations return: typed results whose outcome is a field.

A result is read by code (deploy_fleet classifies each hub's deploy, the CLI prints a
table, tests assert) and stored by Prefect as the run's result; none of them parses a
message to learn what happened. `hubfleet.cli.common.show` prints any of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
