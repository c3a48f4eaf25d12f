"""hubfleet.events: the pure decisions (times, safety rule, schedule plan, reaper, export)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hubfleet import events
from hubfleet.events import (
    CREATE,
    EXPIRE,
    REMIND,
    EventRefused,
    Extension,
    NotExpirable,
    ReapVerdict,
    ScheduledRun,
)
from hubfleet.loader import load_fleet
from hubfleet.model import Cluster, DataPolicy, EventSpec, Hub

T0 = datetime(2027, 3, 15, 8, 0, tzinfo=UTC)  # start 09:00+01:00
FLEET = load_fleet("fleet")
LOCAL = FLEET.cluster("local")
WORKSHOP = LOCAL.hub("workshop")
SPEC = WORKSHOP.event
assert SPEC is not None


def with_event(hub: Hub, **changes: object) -> Hub:
    assert hub.event is not None
    return hub.model_copy(update={"event": hub.event.model_copy(update=changes)})


def test_times_from_the_example_fleet() -> None:
    times = events.event_times(SPEC)
    assert times.start == T0
    assert times.create_at == T0 - timedelta(hours=2)  # prewarm lead time
    assert times.end == datetime(2027, 3, 17, 17, 0, tzinfo=UTC)
    assert times.expire_at == times.end + timedelta(hours=24)
    assert [off for off, _ in times.reminders] == [timedelta(days=2), timedelta(hours=2)]
    assert [at for _, at in times.reminders] == [
        times.expire_at - timedelta(days=2),
        times.expire_at - timedelta(hours=2),
    ]
    assert events.prewarm_size(SPEC) == 40  # defaults to attendees


def test_standing_hub_is_never_expirable_whatever_the_time() -> None:
    staging = LOCAL.hub("staging")
    for now in (T0, T0 + timedelta(days=3650)):
        with pytest.raises(NotExpirable, match=r"local/staging is a standing hub, not an event"):
            events.refuse_unless_expirable(LOCAL, staging, now)
        with pytest.raises(NotExpirable, match="standing hub"):
            events.event_spec(LOCAL, staging)


def test_event_hub_is_expirable_only_after_its_end() -> None:
    end = SPEC.end
    with pytest.raises(NotExpirable, match=r"the event ends .* which is 1s from now"):
        events.refuse_unless_expirable(LOCAL, WORKSHOP, end - timedelta(seconds=1))
    assert events.refuse_unless_expirable(LOCAL, WORKSHOP, end) == end


def test_extension_moves_the_end_until_the_fleet_changes() -> None:
    later = SPEC.end + timedelta(days=1)
    ext = Extension(later, SPEC.end)
    assert events.effective_end(SPEC, ext) == later
    with pytest.raises(NotExpirable):
        events.refuse_unless_expirable(LOCAL, WORKSHOP, SPEC.end + timedelta(hours=1), ext)
    # The fleet's end was edited after the extension: the fleet wins again.
    edited = SPEC.model_copy(update={"end": SPEC.end + timedelta(hours=5)})
    assert events.effective_end(edited, ext) == edited.end
    assert Extension.from_json(ext.to_json()) == ext


def test_wanted_runs_and_idempotency_keys() -> None:
    now = T0 - timedelta(days=1)
    runs = events.wanted_runs("local", "workshop", SPEC, now)
    assert [r.kind for r in runs] == [CREATE, REMIND, REMIND, EXPIRE]
    assert runs[-1].at == SPEC.end + SPEC.grace
    assert runs[-1].key == "hubfleet:event:expire:local/workshop:20270318T170000Z"
    # Same inputs, same keys: scheduling twice cannot make two runs.
    assert runs == events.wanted_runs("local", "workshop", SPEC, now)
    # Past reminders are not scheduled; a past create is scheduled now only if observed down.
    late = SPEC.end + SPEC.grace - timedelta(hours=1)
    assert [r.kind for r in events.wanted_runs("local", "workshop", SPEC, late)] == [EXPIRE]
    during = T0 + timedelta(hours=1)
    kinds = [r.kind for r in events.wanted_runs("c", "h", SPEC, during, running=False)]
    assert kinds == [CREATE, REMIND, REMIND, EXPIRE]
    kinds = [r.kind for r in events.wanted_runs("c", "h", SPEC, during, running=None)]
    assert kinds == [REMIND, REMIND, EXPIRE]
    # Overdue expiry is scheduled now, with the key of its due time.
    overdue = SPEC.end + SPEC.grace + timedelta(hours=3)
    (expire,) = events.wanted_runs("c", "h", SPEC, overdue)
    assert expire.at == overdue and expire.key.endswith("20270318T170000Z")


def run(kind: str, key: str | None, rid: str = "r") -> ScheduledRun:
    return ScheduledRun(rid, kind, "local", "workshop", T0, key)


def test_plan_schedule_keeps_matches_adds_missing_cancels_stale_and_duplicates() -> None:
    now = T0 - timedelta(days=1)
    wanted = events.wanted_runs("local", "workshop", SPEC, now)
    expiry = wanted[-1]
    existing = [
        run(EXPIRE, expiry.key, "a"),
        run(EXPIRE, expiry.key + "#1", "dup"),  # a duplicate of the same key
        run(EXPIRE, "hubfleet:event:expire:local/workshop:20270301T000000Z", "old"),
    ]
    plan = events.plan_schedule(wanted, existing)
    assert [r.id for r in plan.keep] == ["a"]
    assert sorted(r.id for r in plan.cancel) == ["dup", "old"]
    assert [w.kind for w in plan.schedule] == [CREATE, REMIND, REMIND]
    # A re-scheduled run (key#n) counts as its key.
    plan = events.plan_schedule([expiry], [run(EXPIRE, expiry.key + "#2", "b")])
    assert [r.id for r in plan.keep] == ["b"] and not plan.schedule and not plan.cancel


def test_extension_plan_moves_expiry_and_cancels_the_old_one() -> None:
    now = T0
    before = events.wanted_runs("local", "workshop", SPEC, now, include_create=False)
    scheduled = [run(w.kind, w.key, f"old-{i}") for i, w in enumerate(before)]
    ext = Extension(SPEC.end + timedelta(days=2), SPEC.end)
    after = events.wanted_runs("local", "workshop", SPEC, now, extension=ext, include_create=False)
    plan = events.plan_schedule(after, scheduled)
    assert [w.kind for w in plan.schedule if w.kind == EXPIRE] == [EXPIRE]
    assert [r.kind for r in plan.cancel if r.kind == EXPIRE] == [EXPIRE]
    assert not [r for r in plan.keep if r.kind == EXPIRE]


def test_reaper_expires_only_present_event_hubs_past_expiry_and_reports_overdue() -> None:
    keys = [(c.name, h.name) for c in FLEET.clusters for h in c.hubs if h.kind.value == "event"]
    after = SPEC.end + SPEC.grace + timedelta(minutes=5)
    present: dict[tuple[str, str], bool | None] = {k: True for k in keys}
    verdicts = {(i.cluster, i.hub): i.verdict for i in events.reap_plan(FLEET, after, present)}
    assert set(verdicts) == set(keys)  # standing hubs never appear
    assert verdicts[("local", "workshop")] is ReapVerdict.expire
    present[("local", "workshop")] = False
    items = events.reap_plan(FLEET, after, present)
    assert {(i.cluster, i.hub): i.verdict for i in items}[("local", "workshop")] is ReapVerdict.gone
    during = T0 + timedelta(minutes=30)
    items = events.reap_plan(FLEET, during, {("local", "workshop"): False})
    item = next(i for i in items if i.hub == "workshop")
    assert item.verdict is ReapVerdict.overdue_create
    assert item.reason == "creation was due 2h ago; not present"
    # Unobserved providers are said so, never guessed.
    others = [i for i in items if i.hub != "workshop"]
    assert others and all(i.verdict is ReapVerdict.unobserved for i in others)
    # An extension keeps a hub out of the reaper.
    ext = {("local", "workshop"): Extension(after + timedelta(days=1), SPEC.end)}
    items = events.reap_plan(FLEET, after, {("local", "workshop"): True}, ext)
    assert next(i for i in items if i.hub == "workshop").verdict is ReapVerdict.fine


def test_export_url_per_policy_and_provider() -> None:
    assert (
        events.export_url(LOCAL, WORKSHOP, "/data/exports", "S")
        == "file:///data/exports/local/workshop/S"
    )
    assert (
        events.export_url(LOCAL, with_event(WORKSHOP, data_policy=DataPolicy.delete), "/x", "S")
        is None
    )
    cloud = next(c for c in FLEET.clusters if c.provider.value == "aws")
    bare = WORKSHOP.model_copy(update={"name": "conf"})
    with pytest.raises(EventRefused, match=r"data_policy is export but event.export is not set"):
        events.export_url(cloud, bare, "/x", "S")
    target = {"url": "s3://bucket/exports/", "credentials": "aws-export"}
    spec = EventSpec.model_validate({**SPEC.model_dump(), "export": target})
    ok = bare.model_copy(update={"event": spec})
    assert events.export_url(cloud, ok, "/x", "S") == f"s3://bucket/exports/{cloud.name}/conf/S"


def test_model_rejects_bad_timezone_and_export_url_with_the_fix() -> None:
    base = SPEC.model_dump()
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Pariss'; use an IANA name"):
        EventSpec.model_validate({**base, "timezone": "Europe/Pariss"})
    with pytest.raises(ValueError, match="export"):
        EventSpec.model_validate({**base, "export": {"url": "ftp://x/y"}})
    assert events.local_time(T0, "Europe/Paris") == "2027-03-15 09:00 CET"


def test_cluster_type_is_the_model() -> None:
    assert isinstance(LOCAL, Cluster)
