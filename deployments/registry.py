"""The one list of operations hubfleet deploys: adding an operation is adding one entry.

This is the Python equivalent of a `prefect.yaml`: each entry names the flow's entrypoint,
the deployment's name and tags, its work pool, and (optionally) the key of its schedule in
`fleet/fleet.yaml` `schedules`, so an operator changes a time in one place. Every entry
imports (tests/unit checks it): an entry that does not is a bug, raised by `hubfleet setup`
before it changes anything.

Nothing here talks to Prefect's API: `deployments.setup` turns these entries into
deployments, schedules and automations; the concurrency limits are `tasks.locks`'.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from hubfleet.model import Fleet, Schedules

#: The process work pool every operation runs on by default (`hubfleet worker` serves it).
DEFAULT_POOL = "hubfleet"

#: Shown in the UI run form for parameters whose flow gives no description of its own.
PARAMETER_DOCS: dict[str, tuple[str, str]] = {
    "cluster": ("Cluster", "The cluster: a directory of fleet/clusters (its cluster.yaml)."),
    "hub": ("Hub", "The hub's name inside the chosen cluster (see the cluster's hubs list)."),
    "dry_run": ("Dry run", "Only report what would change; change nothing."),
    "keep_data": ("Keep data", "Archive the hub's data before removing it (else delete it)."),
}


@dataclass(frozen=True)
class OperationSpec:
    """One operation deployed to Prefect.

    entrypoint: `module.path:flow_function` (importable from the installed package).
    schedule: a field of `hubfleet.model.Schedules`; its cron comes from fleet.yaml.
    schedule_parameters: parameters of the scheduled runs (required ones must be given).
    """

    entrypoint: str
    name: str = "default"
    tags: tuple[str, ...] = ()
    pool: str = DEFAULT_POOL
    schedule: str | None = None
    schedule_parameters: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    #: At most this many runs of the deployment at once (None: no limit).
    concurrency_limit: int | None = None

    def __post_init__(self) -> None:
        if ":" not in self.entrypoint:
            raise ValueError(f"entrypoint {self.entrypoint!r}: use 'module.path:flow_function'")
        if self.schedule is not None and self.schedule not in Schedules.model_fields:
            allowed = ", ".join(Schedules.model_fields)
            raise ValueError(f"schedule {self.schedule!r} is not a fleet schedule ({allowed})")

    @property
    def module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def function(self) -> str:
        return self.entrypoint.split(":", 1)[1]

    def load(self) -> Any:
        """The flow object."""
        return getattr(importlib.import_module(self.module), self.function)

    def cron(self, fleet: Fleet) -> str | None:
        """This operation's cron (UTC) from fleet.yaml, or None when it is on demand only."""
        return getattr(fleet.settings.schedules, self.schedule) if self.schedule else None


# Event hubs (flows/event_hubs/): the scheduled create/remind/expire runs go through these.
EVENT_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec("flows.event_hubs.create:create_event_hub", tags=("mutating",)),
    OperationSpec("flows.event_hubs.remind:remind_event_organizers", tags=("read-only",)),
    OperationSpec("flows.event_hubs.extend:extend_event_hub", tags=("mutating",)),
    OperationSpec("flows.event_hubs.expire:expire_event_hub", tags=("mutating",)),
    OperationSpec("flows.event_hubs.sync_schedules:sync_event_schedules", tags=("mutating",)),
    OperationSpec(
        "flows.event_hubs.reap:reap_expired_event_hubs", tags=("mutating",), schedule="reap_events"
    ),
)


def deployment_of(flow_name: str, specs: tuple[OperationSpec, ...] = EVENT_OPERATIONS) -> str:
    """The deployment ("<flow name>/<deployment name>") registered for a flow, e.g. the one
    `run_deployment` schedules an event's runs through."""
    for spec in specs:
        if spec.function == flow_name:
            return f"{flow_name}/{spec.name}"
    raise KeyError(f"no deployment of {flow_name!r} in deployments/registry.py")


# The scheduled health sweeps (flows/check_fleet_health.py). Streaks are carried from one
# sweep to the next, so never two sweeps of a depth at once. Their alert automation is
# deployments/health.py's.
HEALTH_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(
        "flows.check_fleet_health:check_fleet_health",
        name="health-deep",
        tags=("read-only", "depth:deep"),
        schedule="health_deep",
        schedule_parameters={"depth": "deep", "alert_after": 1},
        description="Deep health sweep of every hub, spawn included (alerts after 1 failed "
        "sweep: its probes were already retried).",
        concurrency_limit=1,
    ),
    OperationSpec(
        "flows.check_fleet_health:check_fleet_health",
        name="health-shallow",
        tags=("read-only", "depth:shallow"),
        schedule="health_shallow",
        schedule_parameters={"depth": "shallow", "alert_after": 3},
        description="Shallow health sweep of every hub: reachable, api, auth (alerts after "
        "3 failed sweeps in a row, so one blip is not an alarm).",
        concurrency_limit=1,
    ),
)

# Every operation of DESIGN.md.
OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec("flows.deploy_hub:deploy_hub", tags=("mutating",)),
    OperationSpec("flows.check_hub_health:check_hub_health", tags=("read-only",)),
    OperationSpec("flows.teardown_hub:teardown_hub", tags=("mutating",)),
    OperationSpec("flows.deploy_fleet:deploy_fleet", tags=("mutating",)),
    OperationSpec("flows.upgrade_fleet:upgrade_fleet", tags=("mutating",), schedule="upgrade"),
    OperationSpec("flows.provision_cluster:provision_cluster", tags=("mutating",)),
    OperationSpec("flows.destroy_cluster:destroy_cluster", tags=("mutating",)),
    OperationSpec("flows.detect_drift:detect_drift", tags=("read-only",), schedule="detect_drift"),
    OperationSpec(
        "flows.rotate_credentials:rotate_credentials",
        tags=("mutating",),
        schedule="rotate_credentials",
    ),
    *EVENT_OPERATIONS,
    # The pilot (issue 10): community self-service, and the monthly fleet ops report.
    OperationSpec("flows.customize_hub:customize_hub", tags=("mutating", "self-service")),
    OperationSpec(
        "flows.fleet_report:publish_fleet_report",
        tags=("read-only",),
        schedule="fleet_report",
    ),
    *HEALTH_OPERATIONS,
    # Backups of standing hubs (issue 17): the nightly fleet backup, and on demand.
    OperationSpec("flows.backup_hub:backup_fleet", tags=("mutating",), schedule="backup"),
    OperationSpec("flows.backup_hub:backup_hub", tags=("mutating",)),
    OperationSpec("flows.restore_hub:restore_hub", tags=("mutating",)),
)


def resolve(registry: tuple[OperationSpec, ...] = OPERATIONS) -> list[tuple[OperationSpec, Any]]:
    """Each entry with its flow object (an entry that does not import raises)."""
    return [(spec, spec.load()) for spec in registry]
