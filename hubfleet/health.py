"""Health verdicts: pure functions of what the probes saw, so they are easy to reason about.

Levels go from shallow to deep: reachable → api → auth → spawn → tls → k8s. A hub is as
healthy as its first failing level. One failed check is not an alarm: `next_streak`
counts consecutive failed checks and raises an alert once, when the count reaches the
threshold, and a recovery when a hub that alerted is healthy again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from hubfleet.errors import HubfleetError

#: The user whose server the spawn probe starts. It can never log in interactively: local
#: hubs use the null authenticator and list it in `Authenticator.blocked_users`.
HEALTH_USER = "hubfleet-health"

TLS_WARN_DAYS = 21
TLS_FAIL_DAYS = 7
#: A pod Pending longer than this is a failure even while its Deployment is still rolling.
PENDING_GRACE_S = 300.0


class Level(StrEnum):
    """Probe levels, shallow to deep. A hub is only as healthy as its first failing level."""

    reachable = "reachable"  # /hub/health answers 200
    api = "api"  # /hub/api answers with a version
    auth = "auth"  # the ops token is accepted
    spawn = "spawn"  # a server starts for the health user and runs Python in a kernel
    tls = "tls"  # the certificate is valid for long enough
    k8s = "k8s"  # Deployments ready, no crash-looping or stuck pods, PVCs bound


LEVELS: tuple[Level, ...] = tuple(Level)


@dataclass(frozen=True)
class Retry:
    """How a probe is retried: `retries` more tries after the first, `backoff` seconds
    before the first retry, doubling each time (with jitter); transient errors only
    (no answer, connection refused, HTTP 429/502/503/504), so one blip is absorbed before
    it counts and a real refusal counts at once."""

    retries: int
    backoff: float


#: The one retry policy of every probe, on every path (one hub after a deploy or on
#: demand, or many in a sweep). Spawn starts a server: one retry, a second later.
RETRY: dict[Level, Retry] = {
    Level.reachable: Retry(3, 0.5),
    Level.api: Retry(2, 0.5),
    Level.auth: Retry(2, 0.5),
    Level.spawn: Retry(1, 1.0),
    Level.tls: Retry(2, 0.5),
    Level.k8s: Retry(2, 1.0),
}

#: After one of these fails, the HTTP levels after it cannot answer either.
STOPS = (Level.reachable, Level.api)


def blocked(level: Level, results: Iterable[ProbeResult]) -> bool:
    """The one stop rule: once reachable or api failed, no later HTTP level is probed;
    k8s still runs (Kubernetes can say why nothing answers)."""
    return level is not Level.k8s and any(not r.ok and r.level in STOPS for r in results)


class Verdict(StrEnum):
    healthy = "healthy"
    degraded = "degraded"
    down = "down"


ALL_PASSED = "all probes passed"

#: Levels whose failure means users cannot use the hub; others only degrade it.
_FATAL = {Level.reachable, Level.api}

#: Named depths; a level name is also a depth ("up to and including that level").
DEPTHS: dict[str, tuple[Level, ...]] = {
    "shallow": (Level.reachable, Level.api, Level.auth),
    "deep": LEVELS,
}


class BadDepth(HubfleetError):
    """A depth that is neither a named depth nor a level."""


def levels_for(depth: str) -> tuple[Level, ...]:
    """The levels a check of `depth` probes, shallow first."""
    if depth in DEPTHS:
        return DEPTHS[depth]
    if depth in Level.__members__:
        return LEVELS[: LEVELS.index(Level(depth)) + 1]
    allowed = ", ".join([*DEPTHS, *Level.__members__])
    raise BadDepth(f"depth {depth!r} is not known; use one of: {allowed}")


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw: ok or not, how long it took, and why it failed.

    `skipped` probes (e.g. tls on a plain-http local hub) count as passed, with the reason
    shown; `warning` marks a passing probe that needs attention soon (a certificate that
    expires in less than three weeks).
    """

    level: Level
    ok: bool
    latency_ms: float | None = None
    reason: str = ""
    detail: str = ""  # e.g. the JupyterHub version
    skipped: bool = False
    warning: bool = False

    @property
    def status(self) -> str:
        if self.skipped:
            return "skip"
        if not self.ok:
            return "FAIL"
        return "warn" if self.warning else "ok"


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

    @property
    def level(self) -> str:
        """The failing level ('' when healthy)."""
        failed = [p for p in self.probes if not p.ok]
        return failed[0].level.value if failed else ""


def judge(hub: str, probes: Sequence[ProbeResult]) -> HealthReport:
    """Healthy if every probe passed; down if a fatal level failed; else degraded."""
    failed = [p for p in probes if not p.ok]
    if not failed:
        warnings = [f"{p.level}: {p.reason}" for p in probes if p.warning]
        reason = "; ".join(warnings) if warnings else ALL_PASSED
        return HealthReport(hub, Verdict.healthy, reason, tuple(probes))
    first = failed[0]
    verdict = Verdict.down if first.level in _FATAL else Verdict.degraded
    return HealthReport(hub, verdict, f"{first.level}: {first.reason}", tuple(probes))


# --- tls --------------------------------------------------------------------------------


def judge_tls(
    not_after: datetime,
    now: datetime,
    latency_ms: float | None = None,
    warn_days: int = TLS_WARN_DAYS,
    fail_days: int = TLS_FAIL_DAYS,
) -> ProbeResult:
    """Days until the certificate expires: fail below `fail_days`, warn below `warn_days`."""
    days = (not_after - now).total_seconds() / 86400
    detail = f"certificate expires {not_after:%Y-%m-%d} ({days:.0f} days)"
    if days < 0:
        return ProbeResult(
            Level.tls, False, latency_ms, f"certificate expired {-days:.0f} days ago"
        )
    if days < fail_days:
        return ProbeResult(
            Level.tls,
            False,
            latency_ms,
            f"certificate expires in {days:.1f} days (< {fail_days}); renew it now",
        )
    if days < warn_days:
        return ProbeResult(
            Level.tls,
            True,
            latency_ms,
            f"certificate expires in {days:.0f} days (< {warn_days})",
            detail,
            warning=True,
        )
    return ProbeResult(Level.tls, True, latency_ms, detail=detail)


# --- k8s --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentSeen:
    """A Deployment (hub, proxy, user-scheduler) or DaemonSet (the image pullers) as the
    probe saw it: pods wanted, pods ready."""

    name: str
    desired: int
    ready: int
    kind: str = "deployment"  # or "daemonset"


@dataclass(frozen=True)
class PodSeen:
    """A pod as the probe saw it: phase, and the most telling reason the API gives."""

    name: str
    phase: str
    age_s: float
    waiting: tuple[str, ...] = ()  # container waiting reasons, e.g. CrashLoopBackOff
    conditions: tuple[str, ...] = ()  # e.g. "PodScheduled=False Unschedulable: 0/1 nodes..."


@dataclass(frozen=True)
class PvcSeen:
    name: str
    phase: str


#: Deployments a zero-to-jupyterhub release always has.
REQUIRED_DEPLOYMENTS = ("hub", "proxy")


def judge_k8s(
    namespace: str,
    deployments: Iterable[DeploymentSeen],
    pods: Iterable[PodSeen],
    pvcs: Iterable[PvcSeen],
    latency_ms: float | None = None,
    pending_grace_s: float = PENDING_GRACE_S,
    required: Sequence[str] = REQUIRED_DEPLOYMENTS,
) -> ProbeResult:
    """Every problem in the namespace, named with the pod's own reason; ok if none."""
    problems: list[str] = []
    deployments = list(deployments)
    names = {d.name for d in deployments if d.kind == "deployment"}
    problems += [f"deployment {n} missing" for n in required if n not in names]
    pods = list(pods)
    for d in deployments:
        if d.ready < d.desired:
            # The pods of the Deployment say why: Unschedulable, CrashLoopBackOff, ...
            reasons = [_pod_reason(p) for p in pods if p.name.startswith(f"{d.name}-")]
            why = [r for r in reasons if r]
            problems.append(
                f"{d.kind} {d.name} {d.ready}/{d.desired} ready"
                + (f" ({'; '.join(why)})" if why else "")
            )
    for pod in pods:
        crashing = [
            w
            for w in pod.waiting
            if w in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerError")
        ]
        if crashing:
            problems.append(f"pod {pod.name} {crashing[0]}")
        elif pod.phase == "Pending" and pod.age_s > pending_grace_s:
            said = "; ".join(pod.conditions) or ", ".join(pod.waiting) or "no reason given"
            problems.append(f"pod {pod.name} Pending for {pod.age_s:.0f}s: {said}")
        elif pod.phase == "Failed":
            problems.append(f"pod {pod.name} Failed: {'; '.join(pod.conditions) or '-'}")
    problems += [f"pvc {p.name} {p.phase}" for p in pvcs if p.phase != "Bound"]
    if not problems:
        sets = sum(d.kind == "daemonset" for d in deployments)
        detail = (
            f"{len(deployments) - sets} deployments"
            + (f" and {sets} daemonsets" if sets else "")
            + f" ready in namespace {namespace}"
        )
        return ProbeResult(Level.k8s, True, latency_ms, detail=detail)
    return ProbeResult(
        Level.k8s, False, latency_ms, f"namespace {namespace}: " + "; ".join(problems)
    )


def _pod_reason(pod: PodSeen) -> str:
    if pod.waiting:
        return f"pod {pod.name} {pod.phase}: {', '.join(pod.waiting)}"
    if pod.conditions:
        return f"pod {pod.name} {pod.phase}: {'; '.join(pod.conditions)}"
    return ""


# --- consecutive failures and alerts ----------------------------------------------------


@dataclass(frozen=True)
class Streak:
    """A hub's run of consecutive failed checks, carried from one sweep to the next."""

    failures: int = 0
    since: str = ""  # ISO time of the first failure of the run
    alerted: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> Streak:
        if not row:
            return cls()
        return cls(
            int(row.get("failures") or 0), str(row.get("since") or ""), bool(row.get("alerted"))
        )


@dataclass(frozen=True)
class Transition:
    """What a check changes in a hub's alert state: nothing, an alert, or a recovery."""

    streak: Streak
    alert: bool = False
    recovered: bool = False
    notes: list[str] = field(default_factory=list)


def next_streak(prev: Streak, verdict: Verdict, now: datetime, alert_after: int) -> Transition:
    """Count a check into the streak. Alert once, when failures reach `alert_after`."""
    if alert_after < 1:
        raise ValueError("alert_after must be at least 1")
    if verdict is Verdict.healthy:
        return Transition(Streak(), recovered=prev.alerted)
    streak = replace(prev, failures=prev.failures + 1, since=prev.since or now.isoformat())
    if streak.failures >= alert_after and not prev.alerted:
        return Transition(replace(streak, alerted=True), alert=True)
    return Transition(streak)


def changes(previous: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """What changed since the last sweep, one line per hub whose verdict or reason moved."""
    lines = []
    for hub in sorted(current):
        now, before = current[hub], previous.get(hub)
        if before is None:
            lines.append(f"{hub}: first check, {now['verdict']}")
        elif before["verdict"] != now["verdict"]:
            why = f" ({now['reason']})" if now.get("reason") else ""
            lines.append(f"{hub}: {before['verdict']} → {now['verdict']}{why}")
        elif now["verdict"] != "healthy" and before.get("level") != now.get("level"):
            lines.append(f"{hub}: still {now['verdict']}, now at {now['level']}")
    lines += [f"{hub}: no longer checked" for hub in sorted(set(previous) - set(current))]
    return lines
