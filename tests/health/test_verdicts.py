"""The pure verdict logic: levels, verdicts, tls and k8s judgements, the streak rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hubfleet.health import (
    BadDepth,
    DeploymentSeen,
    Level,
    PodSeen,
    ProbeResult,
    PvcSeen,
    Streak,
    Verdict,
    changes,
    judge,
    judge_k8s,
    judge_tls,
    levels_for,
    next_streak,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_depths() -> None:
    assert levels_for("shallow") == (Level.reachable, Level.api, Level.auth)
    assert levels_for("deep")[-1] is Level.k8s and len(levels_for("deep")) == 6
    assert levels_for("spawn") == (Level.reachable, Level.api, Level.auth, Level.spawn)
    with pytest.raises(BadDepth, match="'medium' is not known; use one of: shallow, deep, reach"):
        levels_for("medium")


def test_verdict_is_the_first_failing_level() -> None:
    ok = ProbeResult(Level.reachable, True, 3.0)
    assert judge("c/h", [ok]).verdict is Verdict.healthy
    down = judge("c/h", [ProbeResult(Level.reachable, False, 1.0, "refused")])
    assert (down.verdict, down.reason, down.level) == (
        Verdict.down,
        "reachable: refused",
        "reachable",
    )
    spawn = judge("c/h", [ok, ProbeResult(Level.spawn, False, None, "boom")])
    assert spawn.verdict is Verdict.degraded and spawn.level == "spawn"
    skipped = judge("c/h", [ok, ProbeResult(Level.tls, True, None, "plain http", skipped=True)])
    assert skipped.verdict is Verdict.healthy and skipped.probes[1].status == "skip"


@pytest.mark.parametrize(
    ("days", "status", "verdict"),
    [
        (60, "ok", "healthy"),
        (15, "warn", "healthy"),
        (3, "FAIL", "degraded"),
        (-2, "FAIL", "degraded"),
    ],
)
def test_tls_thresholds(days: int, status: str, verdict: str) -> None:
    result = judge_tls(NOW + timedelta(days=days), NOW)
    assert result.status == status
    report = judge("c/h", [ProbeResult(Level.reachable, True), result])
    assert report.verdict == verdict
    if status == "warn":
        assert "expires in 15 days (< 21)" in report.reason


def test_k8s_names_each_problem_with_its_reason() -> None:
    result = judge_k8s(
        "ns",
        [DeploymentSeen("hub", 1, 0), DeploymentSeen("proxy", 1, 1)],
        [
            PodSeen("hub-1", "Running", 50, waiting=("CrashLoopBackOff",)),
            PodSeen("user-a", "Pending", 10, conditions=("PodScheduled=False Unschedulable: x",)),
            PodSeen("user-b", "Pending", 900, conditions=("PodScheduled=False Unschedulable: y",)),
        ],
        [PvcSeen("home", "Pending")],
    )
    assert not result.ok
    assert "deployment hub 0/1 ready (pod hub-1 Running: CrashLoopBackOff)" in result.reason
    assert "pod hub-1 CrashLoopBackOff" in result.reason
    assert "user-a" not in result.reason  # pending for less than the grace period
    assert "pod user-b Pending for 900s: PodScheduled=False Unschedulable: y" in result.reason
    assert "pvc home Pending" in result.reason
    missing = judge_k8s("ns", [DeploymentSeen("hub", 1, 1)], [], [])
    assert missing.reason == "namespace ns: deployment proxy missing"
    fine = judge_k8s("ns", [DeploymentSeen("hub", 1, 1), DeploymentSeen("proxy", 1, 1)], [], [])
    assert fine.ok


def test_k8s_judges_what_z2jh_adds_when_enabled() -> None:
    """The user scheduler (a Deployment) and the image pullers (DaemonSets) count like hub
    and proxy once a hub's values turn them on; a DaemonSet is never a missing Deployment."""
    seen = [
        DeploymentSeen("hub", 1, 1),
        DeploymentSeen("proxy", 1, 1),
        DeploymentSeen("user-scheduler", 2, 1),
        DeploymentSeen("continuous-image-puller", 3, 2, kind="daemonset"),
    ]
    pods = [PodSeen("continuous-image-puller-x1", "Pending", 30, waiting=("ImagePullBackOff",))]
    result = judge_k8s("ns", seen, pods, [])
    assert "deployment user-scheduler 1/2 ready" in result.reason
    assert "daemonset continuous-image-puller 2/3 ready" in result.reason
    assert "pod continuous-image-puller-x1 ImagePullBackOff" in result.reason
    ready = [*seen[:2], DeploymentSeen("continuous-image-puller", 3, 3, kind="daemonset")]
    fine = judge_k8s("ns", ready, [], [])
    assert fine.ok and fine.detail == "2 deployments and 1 daemonsets ready in namespace ns"
    only_sets = judge_k8s("ns", [DeploymentSeen("hub", 1, 1, kind="daemonset")], [], [])
    assert "deployment hub missing" in only_sets.reason


def test_one_blip_is_not_an_alarm_three_in_a_row_alert_once() -> None:
    s = Streak()
    blip = next_streak(s, Verdict.down, NOW, 3)
    assert blip.streak.failures == 1 and not blip.alert
    assert next_streak(blip.streak, Verdict.healthy, NOW, 3).streak == Streak()

    moves = []
    for i in range(5):
        move = next_streak(s, Verdict.degraded, NOW + timedelta(minutes=15 * i), 3)
        moves.append(move)
        s = move.streak
    assert [m.alert for m in moves] == [False, False, True, False, False]
    assert s.failures == 5 and s.since == NOW.isoformat() and s.alerted
    healed = next_streak(s, Verdict.healthy, NOW, 3)
    assert healed.recovered and healed.streak == Streak()
    assert next_streak(Streak(), Verdict.down, NOW, 1).alert  # nightly: one failed night


def test_changes_since_the_last_sweep() -> None:
    before = {
        "a": {"verdict": "healthy"},
        "b": {"verdict": "down", "level": "reachable"},
        "gone": {},
    }
    after = {
        "a": {"verdict": "down", "reason": "reachable: refused", "level": "reachable"},
        "b": {"verdict": "down", "reason": "api: 500", "level": "api"},
        "new": {"verdict": "healthy", "reason": ""},
    }
    assert changes(before, after) == [
        "a: healthy → down (reachable: refused)",
        "b: still down, now at api",
        "new: first check, healthy",
        "gone: no longer checked",
    ]


def test_one_stop_rule_and_one_retry_policy_for_every_path() -> None:
    """After reachable or api fails no later HTTP level is probed (k8s still is), and each
    level's task retries as the policy says: the sweep's probe_shallow reads the same."""
    from hubfleet.health import RETRY, ProbeResult, blocked
    from tasks import probes

    down = [ProbeResult(Level.reachable, False, None, "connection refused")]
    assert [lvl for lvl in Level if blocked(lvl, down)] == [
        Level.reachable, Level.api, Level.auth, Level.spawn, Level.tls,
    ]  # fmt: skip
    refused = [ProbeResult(Level.reachable, True, 1.0), ProbeResult(Level.auth, False, 1.0, "403")]
    assert not any(blocked(lvl, refused) for lvl in Level)
    tasks = {
        Level.reachable: probes.probe_reachable,
        Level.api: probes.probe_api,
        Level.auth: probes.probe_auth,
        Level.spawn: probes.probe_spawn,
        Level.tls: probes.probe_tls,
        Level.k8s: probes.probe_k8s,
    }
    assert set(tasks) == set(RETRY) == set(Level)
    for level, probe in tasks.items():
        assert probe.retries == RETRY[level].retries, level
