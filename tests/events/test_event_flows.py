"""Event-hub flows on a real Prefect server (its API, deployments, a real process worker),
real JupyterHub processes and real HTTP. Nothing is mocked."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from waiting import wait_for

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import deploy_hub
from flows.event_hubs import (
    create_event_hub,
    expire_event_hub,
    extend_event_hub,
    reap_expired_event_hubs,
    remind_event_organizers,
    sync_event_schedules,
)
from hubfleet.events import EventRefused, NotExpirable
from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir
from hubfleet.results import Reaped
from tasks import jupyterhub_api as api
from tasks.event_schedule import scheduled_event_runs
from tasks.hub_credentials import _mint_bootstrap_token
from tasks.local_hub import local_hub


def now() -> datetime:
    return datetime.now(UTC)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


EventWriter = Callable[..., Path]

pytestmark = pytest.mark.usefixtures("prefect_server")


def hub(name: str = "workshop"):
    return local_hub(load_fleet(fleet_dir()), "local", name)


async def runs_of(flow_name: str, hub_tag: str = "hub:local/workshop") -> list:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[hub_tag])),
        )


async def scheduled_expiries() -> list:
    return [r for r in await scheduled_event_runs("local", "workshop") if r.kind == "expire"]


def serve_a_user(url: str, token: str, user: str = "alice") -> None:
    """Create a user, spawn their server, write a file through it (real JupyterHub + CHP).

    `token` is an admin's: hubfleet's ops token may not create users or read their files."""
    api.call("POST", f"{url}/hub/api/users/{user}", token=token)
    api.call("POST", f"{url}/hub/api/users/{user}/server", token=token, timeout=60)

    def ready() -> bool:
        info = api.call("GET", f"{url}/hub/api/users/{user}", token=token).json()
        return bool(info["servers"].get("", {}).get("ready"))

    wait_for(f"{user}'s server to be ready", ready, timeout=60)
    response = requests.put(
        f"{url}/user/{user}/api/contents/results.txt",
        json={"type": "file", "format": "text", "content": "42 attendees, 0 crashes\n"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text


@pytest.mark.usefixtures("reap_hub_children")
async def test_event_hub_end_to_end_with_a_real_worker(
    event_fleet: EventWriter, webhook: list, worker, data_dir: Path
) -> None:
    """Created, serves a user, reminded, expired by the scheduled run a real worker picks up;
    the user's files are exported and verified; the hub is gone; the history shows it all."""
    end = now() + timedelta(seconds=100)
    event_fleet(start=now() - minutes(30), end=end, grace="PT5S", reminders="[PT45S]")

    created = await create_event_hub("local", "workshop", operator="alice")
    assert created.deploy.health == "healthy"
    assert "no-op on local" in created.prewarm
    assert [s.split()[0] for s in created.scheduled] == ["remind", "expire"]
    # Re-running create schedules nothing new (idempotency keys).
    again = await create_event_hub("local", "workshop", operator="alice")
    assert again.scheduled == [] and len(again.kept) == 2
    assert len(await scheduled_expiries()) == 1

    block = await HubOpsToken.aload("local-workshop")
    url, token = block.url, block.token.get_secret_value()
    with pytest.raises(api.HubApiError, match=r"HTTP 40[34]"):  # least privilege
        serve_a_user(url, token)
    serve_a_user(url, _mint_bootstrap_token(hub()))  # the hub's own admin, as a test user
    homes = hub().homes
    assert (homes / "alice" / "results.txt").is_file()
    pids = hub().pids()
    assert pids

    async def finished_expiry():
        runs = [r for r in await runs_of("expire_event_hub") if r.state and r.state.is_final()]
        return runs[0] if runs else None

    deadline = time.monotonic() + 200
    expiry = None
    while expiry is None and time.monotonic() < deadline:
        expiry = await finished_expiry()
        await asyncio.sleep(2)
    assert expiry is not None, (
        f"no expire run finished; worker log:\n{worker.log.read_text()[-3000:]}"
    )
    assert expiry.state.type is StateType.COMPLETED, expiry.state.message

    # The export holds alice's file, verified (manifest written only after verification).
    exports = list((data_dir / "exports" / "local" / "workshop").glob("*/alice/results.txt"))
    assert len(exports) == 1 and exports[0].read_text() == "42 attendees, 0 crashes\n"
    assert (exports[0].parent.parent / "hubfleet-export.json").is_file()
    # The hub processes are gone, its state is removed, its ops token is revoked.
    assert not any(_alive(pid) for pid in pids)
    assert not hub().directory.exists()
    with pytest.raises(ValueError):
        await HubOpsToken.aload("local-workshop")
    # The reminder ran and reached the notification block, addressed to the organizers.
    reminders = await runs_of("remind_event_organizers")
    assert [r.state.type for r in reminders] == [StateType.COMPLETED], [
        r.state.message for r in reminders
    ]
    assert any("organizer@example.org" in str(m.get("body")) for m in webhook), webhook
    # Run history: create -> reminder -> expire, each with operator and tags.
    (create,) = [r for r in await runs_of("create_event_hub") if r.state.is_completed()][:1]
    (remind,) = [r for r in await runs_of("remind_event_organizers") if r.state.is_completed()]
    assert create.start_time < remind.start_time < expiry.start_time
    assert {"op:create_event_hub", "operator:alice", "cluster:local"} <= set(create.tags)
    assert {"op:remind_event_organizers", "operator:schedule:alice"} <= set(remind.tags)
    assert {"op:expire_event_hub", "operator:schedule:alice", "hub:local/workshop"} <= set(
        expiry.tags
    )
    assert any(t.startswith("revision:") for t in expiry.tags)
    assert expiry.deployment_id is not None  # it ran through the deployment, on the worker
    # It started from its schedule, not much later by something else (the hourly reaper).
    # A bound, not a speed target: the latency itself is benchmarks/bench_event_expiry.py's;
    # here the worker shares two cores with the suite's other workers (79 s seen, load 15).
    latency = (expiry.start_time - expiry.expected_start_time).total_seconds()
    assert latency < 240, f"expiry started {latency:.0f}s after its scheduled time"
    assert token not in worker.log.read_text()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_reaper_expires_a_hub_whose_scheduled_expiry_was_deleted(
    event_fleet: EventWriter, event_deployments: str, data_dir: Path
) -> None:
    start = now() - minutes(30)
    event_fleet(start=start, end=now() + minutes(10), grace="PT0S", data_policy="delete")
    await create_event_hub("local", "workshop", operator="bob")
    (expiry,) = await scheduled_expiries()
    async with get_client() as client:
        await client.delete_flow_run(UUID(expiry.id))
    assert await scheduled_expiries() == []

    # Before the end: the reaper leaves it, and an explicit expiry is refused.
    early = await reap_expired_event_hubs(operator="bob")
    assert early.hubs["local/workshop"] is Reaped.fine
    with pytest.raises(NotExpirable, match="is expired only after its end"):
        await expire_event_hub("local", "workshop")
    assert hub().is_running()

    # The organizers end the event early in the fleet; no expiry run exists any more.
    event_fleet(start=start, end=now() - timedelta(seconds=1), grace="PT0S", data_policy="delete")
    exports = data_dir / "exports" / "local" / "workshop"

    def exports_now() -> set[str]:
        return {p.name for p in exports.iterdir()} if exports.is_dir() else set()

    exports_before = exports_now()
    dry = await reap_expired_event_hubs(dry_run=True, operator="bob")
    assert dry.hubs["local/workshop"] is Reaped.would_expire and hub().is_running()
    reaped = await reap_expired_event_hubs(operator="bob")
    assert reaped.hubs["local/workshop"] is Reaped.expired
    assert not hub().directory.exists()
    # data_policy: delete exports nothing.
    assert exports_now() == exports_before
    again = await reap_expired_event_hubs(operator="bob")
    assert again.hubs["local/workshop"] is Reaped.gone


async def test_reminder_with_notify_none_is_recorded_not_sent(
    event_fleet: EventWriter,
) -> None:
    """`notify: []` (the demo's fleet offline): the reminder completes, sent nowhere, and its
    run says so; a fleet naming a block that does not exist still fails (never dropped)."""
    root = event_fleet(start=now() + minutes(60), end=now() + minutes(120), reminders="[PT1H]")
    settings = root / "fleet.yaml"
    named = settings.read_text()
    assert re.search(r"(?m)^notify:", named)
    settings.write_text(re.sub(r"(?m)^notify:.*$", "notify: []", named))
    done = await remind_event_organizers("local", "workshop", operator="dave")
    assert done.sent == [] and "organizer" not in done.subject, done
    settings.write_text(re.sub(r"(?m)^notify:.*$", "notify: [no-such-block]", named))
    with pytest.raises(EventRefused, match="no notification block named no-such-block"):
        await remind_event_organizers("local", "workshop", operator="dave")


async def test_standing_hub_is_refused_and_left_running(event_fleet: EventWriter) -> None:
    event_fleet(start=now() - minutes(60), end=now() - minutes(30))
    await deploy_hub("local", "staging", operator="carol")
    pids = hub("staging").pids()
    with pytest.raises(NotExpirable, match=r"local/staging is a standing hub, not an event hub"):
        await expire_event_hub("local", "staging", operator="carol")
    for flow_ in (create_event_hub, extend_event_hub):
        kwargs = {"new_end": now() + minutes(60)} if flow_ is extend_event_hub else {}
        with pytest.raises(NotExpirable, match="standing hub"):
            await flow_("local", "staging", **kwargs)
    assert hub("staging").is_running() and hub("staging").pids() == pids
    (refused,) = [r for r in await runs_of("expire_event_hub", "hub:local/staging")]
    assert refused.state.type is StateType.FAILED
    assert "standing hub" in (refused.state.message or "")


async def test_extend_and_fleet_sync_keep_exactly_one_scheduled_expiry(
    event_fleet: EventWriter, event_deployments: str
) -> None:
    start, end = now() + minutes(120), now() + minutes(240)
    event_fleet(start=start, end=end, grace="PT1H", reminders="[PT2H, PT30M]")
    # Adding the event and syncing creates its schedule: create, two reminders, expiry.
    synced = await sync_event_schedules(operator="dana")
    mine = [s for s in synced.scheduled if "local/workshop" in s]
    assert [s.split()[0] for s in mine] == ["create", "remind", "remind", "expire"]
    assert (await sync_event_schedules(operator="dana")).scheduled == []  # idempotent
    (first,) = await scheduled_expiries()
    assert abs((first.at - (end + timedelta(hours=1))).total_seconds()) < 1

    # An end past any sensible extension is refused before anything changes (it used to
    # end in an OverflowError).
    with pytest.raises(EventRefused, match=r"more than 365 days after the event's end"):
        await extend_event_hub("local", "workshop", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert [r.id for r in await scheduled_expiries()] == [first.id]
    # Dry-run extend changes nothing.
    await extend_event_hub("local", "workshop", end + minutes(60), dry_run=True)
    assert [r.id for r in await scheduled_expiries()] == [first.id]
    # Extend: the expiry moves; the old run is cancelled, not left behind.
    moved = await extend_event_hub("local", "workshop", end + minutes(60), operator="dana")
    assert len(moved.cancelled) == 3  # old expiry and its two reminders
    (second,) = await scheduled_expiries()
    assert second.id != first.id
    assert abs((second.at - (end + minutes(120))).total_seconds()) < 1
    async with get_client() as client:
        old = await client.read_flow_run(UUID(first.id))
    assert old.state.type is StateType.CANCELLED
    # A sync now keeps the extension (the fleet's end is unchanged).
    assert (await sync_event_schedules(operator="dana")).scheduled == []
    with pytest.raises(Exception, match="not in the future"):
        await extend_event_hub("local", "workshop", now() - minutes(1))

    # Editing the fleet's end wins over the extension: sync moves the expiry again.
    event_fleet(start=start, end=end + minutes(30), grace="PT1H", reminders="[PT2H, PT30M]")
    await sync_event_schedules(operator="dana")
    (third,) = await scheduled_expiries()
    assert abs((third.at - (end + minutes(90))).total_seconds()) < 1
    # Removing the event from the fleet cancels everything it had scheduled.
    event_fleet(start=start, end=end, present=False)
    gone = await sync_event_schedules(operator="dana")
    assert len([c for c in gone.cancelled if "local/workshop" in c]) == 4
    assert await scheduled_event_runs("local", "workshop") == []


async def test_scheduling_an_unregistered_deployment_says_to_run_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect's own answer for a missing deployment (ObjectNotFound, by type, not by the
    words of its message) becomes the message that says what to run; nothing is scheduled."""
    from hubfleet.events import WantedRun
    from tasks import event_schedule

    monkeypatch.setitem(event_schedule.DEPLOYMENTS, "create", "create_event_hub/not-registered")
    want = WantedRun(
        "create", "local", "ghost", datetime.now(UTC) + timedelta(hours=1), "ghost-create-test"
    )
    with pytest.raises(EventRefused, match=r"'create_event_hub/not-registered' does not exist"):
        await event_schedule.schedule_run.fn(want, "tester")
