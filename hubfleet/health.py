"""Health verdicts: a pure function of probe results, so it is easy to reason about."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """Probe levels, shallow to deep. A hub is only as healthy as its first failing level."""

    reachable = "reachable"  # /hub/health answers 200
    api = "api"  # /hub/api answers with a version
    auth = "auth"  # the ops token is accepted


class Verdict(StrEnum):
    healthy = "healthy"
    degraded = "degraded"
    down = "down"


#: Levels whose failure means users cannot use the hub; others only degrade it.
_FATAL = {Level.reachable, Level.api}


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw: ok or not, how long it took, and why it failed."""

    level: Level
    ok: bool
    latency_ms: float | None = None
    reason: str = ""
    detail: str = ""  # e.g. the JupyterHub version


@dataclass(frozen=True)
class HealthReport:
    hub: str
    verdict: Verdict
    reason: str
    probes: tuple[ProbeResult, ...]

    @property
    def latency_ms(self) -> float | None:
        """Latency of the shallowest probe: what a user would feel on the front page."""
        return self.probes[0].latency_ms if self.probes else None


def judge(hub: str, probes: list[ProbeResult]) -> HealthReport:
    """Healthy if every probe passed; down if a fatal level failed; else degraded."""
    failed = [p for p in probes if not p.ok]
    if not failed:
        return HealthReport(hub, Verdict.healthy, "all probes passed", tuple(probes))
    first = failed[0]
    verdict = Verdict.down if first.level in _FATAL else Verdict.degraded
    return HealthReport(hub, verdict, f"{first.level}: {first.reason}", tuple(probes))
