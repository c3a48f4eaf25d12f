"""Fleet deploy/upgrade planning: a pure function of the fleet and what is deployed.

Per cluster: the support chart first (Kubernetes clusters), then the staging hubs, then a
health gate (every staging hub healthy), then the prod hubs in waves. Within a step at
most `parallelism` hubs change at once. A failure stops only its own cluster's later steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet, Provider, Tier

#: (cluster, hub) -> chart version deployed now, or None if not installed.
Deployed = Mapping[tuple[str, str], str | None]


class SelectionInvalid(HubfleetError):
    """A selection names a cluster or hub the fleet does not have; nothing was run."""


@dataclass(frozen=True)
class HubChange:
    cluster: str
    hub: str
    tier: str
    from_version: str | None
    to_version: str

    @property
    def action(self) -> str:
        if self.from_version is None:
            return "install"
        return "upgrade" if self.from_version != self.to_version else "redeploy"


@dataclass(frozen=True)
class ClusterPlan:
    cluster: str
    provider: str
    parallelism: int
    support: bool
    staging: list[HubChange]
    waves: list[list[HubChange]]
    unchanged: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[HubChange]:
        return self.staging + [c for wave in self.waves for c in wave]

    def steps(self) -> int:
        """Sequential rounds of hub changes on the critical path (support counts as one)."""
        rounds = int(self.support) + math.ceil(len(self.staging) / self.parallelism)
        return rounds + sum(math.ceil(len(w) / self.parallelism) for w in self.waves)


@dataclass(frozen=True)
class FleetPlan:
    clusters: list[ClusterPlan]

    @property
    def changes(self) -> list[HubChange]:
        return [c for cp in self.clusters for c in cp.changes]

    def critical_path_steps(self) -> int:
        """Clusters run side by side: the longest cluster sets the pace."""
        return max((cp.steps() for cp in self.clusters), default=0)

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", ""]
        if not self.changes:
            lines.append("Nothing to change: every selected hub runs its chart version.")
        for cp in self.clusters:
            lines += [f"## {cp.cluster} ({cp.provider}, {cp.parallelism} at once)", ""]
            if cp.support:
                lines.append("1. support chart (cluster lock)")
            steps = [("staging", cp.staging)] if cp.staging else []
            steps += [(f"prod wave {i}", w) for i, w in enumerate(cp.waves, 1)]
            for name, hubs in steps:
                listed = ", ".join(f"{h.hub} ({_versions(h)})" for h in hubs)
                lines.append(f"1. {name}: {listed}")
                if name == "staging":
                    lines.append("1. health gate: every staging hub healthy, else prod waits")
            if cp.unchanged:
                lines.append(f"\nunchanged: {', '.join(cp.unchanged)}")
            lines.append("")
        return "\n".join(lines)


def _versions(change: HubChange) -> str:
    return f"{change.from_version or 'new'} → {change.to_version}"


def select(fleet: Fleet, selection: Sequence[str] | None) -> list[tuple[str, str]]:
    """(cluster, hub) pairs named by `selection`: `*` (everything), `cluster`, `cluster/hub`.

    In the fleet's order, each pair once, all problems listed at once; linear in the
    fleet's size (a sweep of 10,000 hubs selects them in milliseconds).
    """
    chosen: dict[tuple[str, str], None] = {}  # an ordered set
    problems = []
    for item in selection or ["*"]:
        cluster_name, _, hub_name = item.partition("/")
        clusters = fleet.clusters if cluster_name == "*" else []
        if cluster_name != "*":
            try:
                clusters = [fleet.cluster(cluster_name)]
            except LookupError as exc:
                problems.append(f"{item!r}: {exc}")
                continue
        for cluster in clusters:
            hubs = cluster.hubs
            if hub_name and hub_name != "*":
                try:
                    hubs = [cluster.hub(hub_name)]
                except LookupError as exc:
                    problems.append(f"{item!r}: {exc}")
                    continue
            chosen.update(((cluster.name, h.name), None) for h in hubs)
    if problems:
        raise SelectionInvalid(
            "selection names what the fleet does not have:\n  "
            + "\n  ".join(problems)
            + "\nUse '*', '<cluster>' or '<cluster>/<hub>'. Nothing was run."
        )
    return list(chosen)


def plan_fleet(
    fleet: Fleet,
    selection: Sequence[str],
    deployed: Deployed,
    *,
    only_version_changes: bool = False,
    wave_size: int | None = None,
    wave_percent: float | None = None,
) -> FleetPlan:
    """Order the selected hubs' changes: support, staging, gate, prod waves per cluster.

    `only_version_changes` (nightly upgrades) skips hubs already on their chart version.
    Wave size: `wave_size` hubs, or `wave_percent` of the cluster's prod hubs (rounded up),
    or by default the cluster's parallelism.
    """
    if wave_size is not None and wave_size < 1:
        raise SelectionInvalid(f"wave_size must be at least 1 (got {wave_size})")
    if wave_percent is not None and not 0 < wave_percent <= 100:
        raise SelectionInvalid(f"wave_percent must be in (0, 100] (got {wave_percent})")
    chosen = select(fleet, selection)
    plans = []
    for cluster in fleet.clusters:
        names = [h for c, h in chosen if c == cluster.name]
        if not names:
            continue
        staging: list[HubChange] = []
        prod: list[HubChange] = []
        unchanged: list[str] = []
        for hub in cluster.hubs:
            if hub.name not in names:
                continue
            target = hub.chart_version or fleet.settings.chart_version
            current = deployed.get((cluster.name, hub.name))
            if only_version_changes and current == target:
                unchanged.append(hub.name)
                continue
            change = HubChange(cluster.name, hub.name, hub.tier.value, current, target)
            (staging if hub.tier is Tier.staging else prod).append(change)
        parallelism = fleet.settings.parallelism
        size = wave_size or (
            math.ceil(len(prod) * wave_percent / 100) if wave_percent else parallelism
        )
        waves = [prod[i : i + size] for i in range(0, len(prod), max(size, 1))]
        kube = cluster.provider is not Provider.local
        plans.append(
            ClusterPlan(
                cluster.name,
                cluster.provider.value,
                parallelism,
                support=kube and bool(staging or prod),
                staging=staging,
                waves=waves,
                unchanged=unchanged,
            )
        )
    return FleetPlan(plans)
