"""The demo's short event hub: created, reminded and expired by the worker within minutes.

The demo runs on its own copy of the fleet, `<data dir>/demo-fleet`: the fleet the user
gave, plus one event hub `demo` on the first `provider: local` cluster, whose times are
fixed when the copy is first written (create at +1 pace, end and reminder at +2 paces,
expiry at +3 paces; a pace is 60 s unless `hubfleet demo --event-pace` says otherwise).
The copy is a git repository of its own, written and committed before the demo runs
anything, so every run of the demo records one fleet revision (`revision:` is the copy's
commit). Re-running the demo keeps the event's times (nothing is rescheduled or
duplicated); `hubfleet demo --down` removes the copy, so the next demo schedules a fresh
event.

The reminder goes through the fleet's `notify` blocks. When they do not exist on the demo's
server (a fresh demo: nothing to send to offline), the copy says `notify: []`, and the
reminder run records its message (log and artifact) and sends it nowhere; the demo says so.

The runs are scheduled the way every event hub's are: `sync_event_schedules` (in this
process) makes the scheduled deployment runs `create_event_hub`, `remind_event_organizers`
and `expire_event_hub` (flows/event_hubs/), and the demo's worker runs them at their time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

from rich.console import Console

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet, Provider
from hubfleet.paths import data_dir

DEMO_HUB = "demo"
DEFAULT_PACE = 60.0
#: How long after its scheduled time the demo waits for a run before giving up on it.
LATE_AFTER = timedelta(seconds=120)
OPERATIONS = {  # run kind (tag event:<kind>) -> the deployment the worker runs it from
    "create": "create_event_hub/default",
    "remind": "remind_event_organizers/default",
    "expire": "expire_event_hub/default",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def demo_fleet_dir() -> Path:
    return data_dir() / "demo-fleet"


def _times_file() -> Path:
    return data_dir() / "demo-event.json"


@dataclass(frozen=True)
class DemoEvent:
    cluster: str
    hub: str
    create_at: datetime
    end: datetime
    expire_at: datetime
    remind_at: datetime | None

    @property
    def target(self) -> str:
        return f"{self.cluster}/{self.hub}"


def _demo_cluster(fleet: Fleet) -> str:
    for cluster in fleet.clusters:
        if cluster.provider is Provider.local:
            return cluster.name
    raise HubfleetError("the fleet has no cluster with 'provider: local' for the demo event")


def _load_times() -> dict[str, Any] | None:
    try:
        data = json.loads(_times_file().read_text())
        return data if isinstance(data, dict) and "create_at" in data else None
    except (OSError, ValueError):
        return None


def prepare(
    source: Fleet, pace: float | None = None, notify_blocks: bool = True
) -> tuple[Path, DemoEvent]:
    """Write (or refresh) the demo fleet: the source fleet plus the demo event hub, committed.

    The event's times are chosen once (`<data dir>/demo-event.json`), from now and `pace`
    (DEFAULT_PACE if None), and kept by every later demo, so a re-run changes nothing.
    `notify_blocks`: whether the fleet's notification blocks exist, also decided once; if
    not, the copy says `notify: []`, so the reminder is recorded in its run and sent nowhere
    (with the blocks missing, a reminder fails: it is never silently dropped).
    """
    from ruamel.yaml import YAML

    if any(h.name == DEMO_HUB for c in source.clusters for h in c.hubs):
        raise HubfleetError(
            f"the fleet already has a hub named {DEMO_HUB!r}; the demo adds its own event hub "
            "of that name: rename yours to run the demo"
        )
    cluster = _demo_cluster(source)
    saved = _load_times()
    target = demo_fleet_dir()
    if saved is None:
        step = timedelta(seconds=max(5.0, DEFAULT_PACE if pace is None else pace))
        now = datetime.now(UTC).replace(microsecond=0)
        saved = {
            "cluster": cluster,
            "create_at": (now + step).isoformat(),
            "end": (now + 2 * step).isoformat(),
            "grace_s": int(step.total_seconds()),
            "notify_blocks": notify_blocks,
        }
        _times_file().write_text(json.dumps(saved, indent=1) + "\n")
    create_at = datetime.fromisoformat(saved["create_at"])
    end = datetime.fromisoformat(saved["end"])
    cluster = saved["cluster"]

    _mirror(source.root, target)
    yaml = YAML()
    yaml.preserve_quotes = True
    cluster_file = target / "clusters" / cluster / "cluster.yaml"
    doc = yaml.load(cluster_file.read_text())
    doc["hubs"].append(
        {
            "name": DEMO_HUB,
            "domain": f"{DEMO_HUB}.{cluster}.hubfleet.test",
            "tier": "staging",
            "kind": "event",
            "event": {
                "start": create_at.isoformat(),
                "end": end.isoformat(),
                "attendees": 5,
                "organizers": ["organizer@example.org"],
                "data_policy": "export",
                "grace": f"PT{saved['grace_s']}S",
                "prewarm": {"lead_time": "PT0S"},  # created at start (a no-op on local)
                # One grace before expiry, i.e. at the end: between creation and expiry.
                "reminders": [f"PT{saved['grace_s']}S"],
            },
            "use_case": "event",
        }
    )
    out = StringIO()
    yaml.dump(doc, out)
    _write_if_changed(cluster_file, out.getvalue())
    if not saved.get("notify_blocks", True) and source.settings.notify:
        fleet_file = target / "fleet.yaml"
        settings = yaml.load(fleet_file.read_text())
        settings["notify"] = []
        out = StringIO()
        yaml.dump(settings, out)
        _write_if_changed(fleet_file, out.getvalue())
    _commit(target, source.root)
    return target, _event(target, cluster)


def _event(root: Path, cluster: str) -> DemoEvent:
    """The demo event's times as the flows compute them (hubfleet.events.event_times)."""
    from hubfleet.events import event_times
    from hubfleet.loader import load_fleet

    hub = load_fleet(root).cluster(cluster).hub(DEMO_HUB)
    assert hub.event is not None
    times = event_times(hub.event)
    remind = times.reminders[0][1] if times.reminders else None
    return DemoEvent(cluster, DEMO_HUB, times.create_at, times.end, times.expire_at, remind)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _mirror(source: Path, target: Path) -> None:
    """Make `target` hold the files of `source` (a file is rewritten only if it differs,
    so the fleet cache, keyed on modification times, stays warm)."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for path in source.rglob("*"):
        if ".git" in path.relative_to(source).parts or not path.is_file():
            continue
        rel = path.relative_to(source)
        wanted.add(rel)
        copy = target / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            shutil.copy2(path, copy)
    for path in target.rglob("*"):
        rel = path.relative_to(target)
        if rel.parts[0] != ".git" and path.is_file() and rel not in wanted:
            path.unlink()


def _commit(target: Path, source: Path) -> None:
    """Commit the demo fleet (its own git repository) if anything changed."""

    def git(*args: str, cwd: Path = target) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-c", "user.name=hubfleet demo", "-c", "user.email=demo@hubfleet.invalid",
             "-c", "commit.gpgsign=false", *args],
            cwd=cwd, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    if not (target / ".git").is_dir():
        git("init", "-q")
    if not git("status", "--porcelain").stdout.strip():
        return
    origin = git("log", "-1", "--format=%h", "--", ".", cwd=source).stdout.strip()
    git("add", "-A")
    done = git(
        "commit", "-q", "-m",
        f"demo fleet: {source} ({origin or 'uncommitted'}) + the demo event hub",
    )  # fmt: skip
    if done.returncode != 0:
        raise HubfleetError(f"could not commit the demo fleet in {target}: {done.stderr}")


def forget() -> None:
    """`--down`: drop the demo fleet and its event's times (the next demo makes new ones)."""
    shutil.rmtree(demo_fleet_dir(), ignore_errors=True)
    _times_file().unlink(missing_ok=True)


# --- scheduling and watching -------------------------------------------------------------


async def demo_runs(event: DemoEvent) -> dict[str, Any]:
    """The demo event's scheduled runs, by kind (the latest of each), in any state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.operation import SCHEDULE_TAG
    from hubfleet.events import idempotency_key

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[SCHEDULE_TAG, f"hub:{event.target}"])
            ),
            limit=50,
        )
    found: dict[str, Any] = {}
    times = {"create": event.create_at, "remind": event.remind_at, "expire": event.expire_at}
    for run in sorted(runs, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC)):
        kind = next((t.removeprefix("event:") for t in run.tags if t.startswith("event:")), None)
        at = times.get(kind or "")
        # Only this event's runs (a past demo event of the same name had other times): the
        # key names the time it was scheduled for (hubfleet.events.idempotency_key).
        if (
            kind
            and at
            and (run.idempotency_key or "").startswith(
                idempotency_key(kind, event.cluster, event.hub, at)
            )
        ):
            found[kind] = run
    return found


def schedule(event: DemoEvent, console: Console) -> dict[str, Any]:
    """Schedule the demo event's runs (sync_event_schedules), unless they exist already."""
    from flows.event_hubs import sync_event_schedules
    from hubfleet.interrupt import run_flow_interruptible

    runs = asyncio.run(demo_runs(event))
    kinds = {"create", "expire"} | ({"remind"} if event.remind_at else set())
    if not kinds <= runs.keys():
        with console.status("sync_event_schedules: scheduling the demo event's runs…"):
            # Its warnings (clusters of the fleet this machine cannot reach) are in the run's
            # log in the UI; here only the outcome.
            quiet = logging.getLogger("prefect.flow_runs")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                done = run_flow_interruptible(sync_event_schedules)
            finally:
                quiet.setLevel(level)
        console.print(
            f"sync_event_schedules: {len(done.scheduled)} run(s) scheduled for the fleet's "
            f"event hubs, {len(done.kept)} kept (warnings, if any, in the run's log)"
        )
        runs = asyncio.run(demo_runs(event))
    return runs


def _state(run: Any) -> str:
    return run.state.type.value if run.state else "?"


def _at(when: datetime | None) -> str:
    return f"{when:%H:%M:%S} UTC" if when else "-"


def show_schedule(event: DemoEvent, runs: dict[str, Any], ui_url: str, console: Console) -> None:
    from rich.table import Table

    now = datetime.now(UTC)
    table = Table(title=f"demo event {event.target} (scheduled runs; the worker runs them)")
    for column in ("operation", "target", "when", "state"):
        table.add_column(column)
    for kind in ("create", "remind", "expire"):
        run = runs.get(kind)
        if run is None:
            continue
        when = run.expected_start_time
        delta = int((when - now).total_seconds()) if when else 0
        table.add_row(
            OPERATIONS[kind],
            event.target,
            f"{_at(when)} ({'in ' + str(delta) + 's' if delta > 0 else 'past'})",
            _state(run),
        )
    console.print(table)
    console.print(
        f"To start one from the UI: {ui_url}/deployments, open create_event_hub/default "
        f"(or expire_event_hub/default), Run > Custom run, cluster={event.cluster}, "
        f"hub={event.hub}"
    )


def wait(event: DemoEvent, console: Console, poll: float = 2.0) -> bool:
    """Print each demo run's state changes until all have ended; False if the worker did not
    finish them in time (each run's scheduled time + LATE_AFTER) or one did not complete."""
    kinds = ["create", "expire"] + (["remind"] if event.remind_at else [])
    latest = max(event.create_at, event.expire_at) + LATE_AFTER
    seen: dict[str, str] = {}
    console.print(
        f"waiting for the worker to run the demo event's runs (until {_at(latest)} at most; "
        "Ctrl-C stops waiting, not the runs)"
    )
    try:
        while True:
            runs = asyncio.run(demo_runs(event))
            for kind in ("create", "remind", "expire"):
                run = runs.get(kind)
                if run is None or seen.get(kind) == _state(run):
                    continue
                seen[kind] = _state(run)
                who = next((t for t in run.tags if t.startswith("operator:")), "")
                console.print(
                    f"  {datetime.now(UTC):%H:%M:%S} UTC  {OPERATIONS[kind]:<32} "
                    f"{event.target}  {run.state.name if run.state else '?'}  {who}"
                )
            if all(seen.get(k) in TERMINAL for k in kinds):
                ok = all(seen[k] == "COMPLETED" for k in kinds)
                if not ok:
                    console.print(
                        "[red]a demo event run did not complete[/]: see it in the UI "
                        "(its logs) and the worker log"
                    )
                return ok
            if datetime.now(UTC) > latest:
                late = [k for k in kinds if seen.get(k) not in TERMINAL]
                console.print(
                    f"[red]the worker did not finish {', '.join(OPERATIONS[k] for k in late)} "
                    f"by {_at(latest)}[/]: is the worker running? (its log: "
                    f"{data_dir() / 'worker.log'}). The runs stay scheduled; the worker runs "
                    "them when it is back."
                )
                return False
            time.sleep(poll)
    except KeyboardInterrupt:
        console.print("stopped waiting; the worker still runs the demo event at its times")
        return True
