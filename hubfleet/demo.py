"""`hubfleet demo`: the whole pipeline on this machine, and `--down` to stop it all.

Up: the Prefect server (SQLite), every local hub deployed and checked, then the operating
picture: `hubfleet setup` (deployments with their schedules and run forms, limits,
automations) and a worker serving the pool in the background, so the scheduled sweeps run
and any deployment can be started from the UI. Re-running reuses all of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from hubfleet import demo_event
from hubfleet.errors import HubfleetError
from hubfleet.interrupt import run_interruptible
from hubfleet.model import Fleet, Hub, Provider
from hubfleet.paths import data_dir
from hubfleet.server import PrefectServer, stop_family


def _local_hubs(fleet: Fleet) -> list[tuple[str, Hub]]:
    hubs = [(c.name, h) for c in fleet.clusters if c.provider is Provider.local for h in c.hubs]
    if not hubs:
        raise HubfleetError(
            "the fleet has no hubs on a cluster with 'provider: local'; the demo deploys those "
            "(see fleet/clusters/local/cluster.yaml in the example fleet)"
        )
    return hubs


def up(
    fleet: Fleet,
    port: int | None,
    console: Console,
    *,
    pace: float = demo_event.DEFAULT_PACE,
    wait: bool = True,
) -> None:
    """Start (or reuse) the Prefect server; write the demo fleet (with the demo event hub);
    `hubfleet setup`, a worker, and the demo event's runs scheduled; deploy and check every
    local hub; show the hubs, the schedules and the demo event's runs, then wait for the
    worker to run them (unless `wait` is False)."""
    from hubfleet.cli.common import hub_table
    from hubfleet.loader import load_fleet
    from hubfleet.values import local_values

    source = fleet
    for cluster, hub in _local_hubs(fleet):  # a broken values file: its file:line, first
        local_values(fleet, cluster, hub)
    server = PrefectServer(data_dir() / "prefect", port)
    started = time.monotonic()
    with console.status("starting the Prefect server (SQLite)…"):
        reused = server.ensure()
    console.print(
        f"Prefect server {'reused' if reused else 'started'} at {server.ui_url} "
        f"(data in {server.home})"
    )
    os.environ.update(server.client_env())  # before Prefect is imported: it reads them once
    from deployments.setup import notification_env_var

    # Everything from here runs on the demo fleet: this fleet + the demo event hub (which the
    # worker creates at its time), written and committed once, before anything runs, so
    # every run of the demo records one fleet revision. A re-run keeps the event's times.
    root, event = demo_event.prepare(source, pace, notify_blocks=_notify_blocks_exist(source))
    os.environ["HUBFLEET_FLEET"] = str(root)
    fleet = load_fleet(root)
    if source.settings.notify and not fleet.settings.notify:
        console.print(
            f"  note: the demo fleet ({root}) has `notify: []`: the fleet's notification "
            f"block(s) {', '.join(source.settings.notify)} do not exist on this server, so "
            "the demo event's reminder is recorded in its run (log and artifact) and sent "
            "nowhere. To send it: create the block(s) (or set "
            f"{notification_env_var(source.settings.notify[0])}=<webhook url>), then "
            "`hubfleet demo --down` and `hubfleet demo`."
        )
    _register(fleet, server, console)
    runs = demo_event.schedule(event, console)
    hubs = [(c, h) for c, h in _local_hubs(fleet) if h.name != demo_event.DEMO_HUB]
    rows = run_interruptible(lambda: _deploy_and_check(hubs, console))
    console.print(hub_table(rows))
    console.print(f"done in {time.monotonic() - started:.1f}s")
    console.print(f"Every run is listed in the Prefect UI: {server.ui_url}/runs")
    console.print(
        f"The API requires a credential: the UI asks for it once; it is in {server.auth_file}"
    )
    console.print(
        f"From a shell: PREFECT_API_URL={server.api_url} "
        f'PREFECT_API_AUTH_STRING="$(cat {server.auth_file})" prefect flow-run ls'
    )
    _show_schedules(fleet, server, console)
    runs = asyncio.run(demo_event.demo_runs(event)) or runs
    demo_event.show_schedule(event, runs, server.ui_url, console)
    console.print("Stop everything (hubs, worker, server): hubfleet demo --down")
    healthy = all(row["verdict"] == "healthy" for row in rows)
    if wait and not demo_event.wait(event, console):
        raise SystemExit(1)
    if not healthy:
        raise SystemExit(1)


def _notify_blocks_exist(fleet: Fleet) -> bool:
    """Whether the fleet's `notify` blocks exist (or setup creates one from its env var)."""
    from prefect.client.orchestration import get_client

    from deployments.health import find_block_document
    from deployments.setup import notification_env_var

    async def exists(name: str) -> bool:
        async with get_client() as client:
            return await find_block_document(client, name) is not None

    return bool(fleet.settings.notify) and any(
        os.environ.get(notification_env_var(name)) or asyncio.run(exists(name))
        for name in fleet.settings.notify
    )


POOL = "hubfleet"


def _register(fleet: Fleet, server: PrefectServer, console: Console) -> None:
    """`hubfleet setup` and a background worker serving the pool."""
    from datetime import timedelta

    from prefect.client.orchestration import get_client
    from rich.markup import escape

    from deployments.setup import setup

    async def register() -> Any:
        async with get_client() as client:
            return await setup(
                client, fleet, pool=POOL, heartbeat_seconds=30, zombie_after=timedelta(seconds=90)
            )

    with console.status("hubfleet setup: deployments, schedules, limits, automations…"):
        report = asyncio.run(register())
    console.print(f"hubfleet setup: {report.summary()}")
    for what in report.updated:  # a re-run updates nothing: if it did, say what
        console.print(f"  updated: {escape(what)}")
    for warning in report.warnings:
        console.print(f"  note: {escape(warning)}")  # `notify: [x]` is no markup
    pid, reused = ensure_worker(server)
    console.print(
        f"worker {'reused' if reused else 'started'} (pid {pid}) serving pool {POOL!r}; "
        f"log: {worker_log()}"
    )


def _show_schedules(fleet: Fleet, server: PrefectServer, console: Console) -> None:
    """What is scheduled next, and how to start a run from the UI."""
    from datetime import UTC, datetime

    from hubfleet.cli.status import gather, render

    hubs = [f"{c.name}/{h.name}" for c in fleet.clusters for h in c.hubs]
    picture = asyncio.run(gather(hubs, limit=5))
    console.print(render(picture, hubs, datetime.now(UTC))[0])  # the schedules
    console.print(
        f"Start a run from the UI: {server.ui_url}/deployments, open deploy_hub/default (or "
        f"any operation), Run > Custom run; the worker runs it. Later: {status_command()}"
    )


def status_command() -> str:
    """The command that shows the demo's picture again (the demo fleet has the demo hub)."""
    return f"hubfleet status --fleet {demo_event.demo_fleet_dir()}"


def worker_state() -> Path:
    return data_dir() / "worker.json"


def worker_log() -> Path:
    return data_dir() / "worker.log"


def _recorded_worker() -> psutil.Process | None:
    try:
        data = json.loads(worker_state().read_text())
        proc = psutil.Process(int(data["pid"]))
        if proc.create_time() == data["started"] and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return None


def ensure_worker(server: PrefectServer) -> tuple[int, bool]:
    """The demo's worker (`hubfleet worker`, in the background, by PID); (pid, reused)."""
    running = _recorded_worker()
    if running is not None:
        return running.pid, True
    env = {**os.environ, **server.client_env(), "HUBFLEET_DATA_DIR": str(data_dir())}
    # The demo quiets its own console (PREFECT_LOGGING_LEVEL=WARNING); the worker's runs
    # keep their INFO logs, which the UI shows on each run's page.
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    hubfleet = Path(sys.executable).parent / "hubfleet"
    with open(worker_log(), "ab") as log:
        popen = subprocess.Popen(
            [str(hubfleet), "worker", "--pool", POOL, "--name", "demo-worker"],
            env=env,
            cwd=data_dir(),  # deployments name modules: any directory works
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = psutil.Process(popen.pid).create_time()
    worker_state().write_text(json.dumps({"pid": popen.pid, "started": started}))
    return popen.pid, False


def stop_worker() -> int | None:
    """Stop the demo's worker and the runs it started (SIGTERM, SIGKILL after 20 s)."""
    proc = _recorded_worker()
    worker_state().unlink(missing_ok=True)
    if proc is None:
        return None
    stop_family(proc, timeout=20)
    return proc.pid


async def _deploy_and_check(hubs: list[tuple[str, Hub]], console: Console) -> list[dict[str, Any]]:
    from flows import check_hub_health as health_flow
    from flows import deploy_hub as deploy_flow
    from hubfleet.interrupt import cancellable

    # Ctrl-C stops the demo within seconds; the run it interrupted is recorded Cancelled.
    deploy_hub = cancellable(deploy_flow.deploy_hub)
    check_hub_health = cancellable(health_flow.check_hub_health)
    failures: dict[str, str] = {}
    for cluster, hub in hubs:
        with console.status(f"deploy_hub {cluster}/{hub.name}…"):
            try:
                result = await deploy_hub(cluster=cluster, hub=hub.name)
                console.print(f"deploy_hub {cluster}/{hub.name}: {result.action}")
            except Exception as exc:  # one failing hub never stops the others
                failures[hub.name] = str(exc)
                console.print(f"[red]deploy_hub {cluster}/{hub.name} failed:[/] {exc}")
    rows = []
    for cluster, hub in hubs:
        with console.status(f"check_hub_health {cluster}/{hub.name}…"):
            report = await check_hub_health(cluster=cluster, hub=hub.name)
        rows.append(
            {
                "hub": report.hub,
                "tier": hub.tier.value,
                "kind": hub.kind.value,
                "url": report.url,
                "verdict": str(report.verdict),
                "latency_ms": report.latency_ms,
                "reason": failures.get(hub.name, report.reason),
            }
        )
    return rows


def down(fleet: Fleet, console: Console) -> None:
    """Stop every hub process and the Prefect server the demo started (by PID); forget the
    demo event (the next demo schedules a new one)."""
    from hubfleet.loader import load_fleet
    from tasks.local_hub import local_hub

    copy = demo_event.demo_fleet_dir()
    if (copy / "fleet.yaml").is_file():
        fleet = load_fleet(copy)  # with the demo event hub, if it was added
    for cluster, hub in _local_hubs(fleet):
        stopped = local_hub(fleet, cluster, hub.name).stop()
        console.print(
            f"{cluster}/{hub.name}: " + (f"stopped {stopped}" if stopped else "not running")
        )
    worker = stop_worker()
    console.print(f"worker: {'stopped ' + str(worker) if worker else 'not running'}")
    pid = PrefectServer(data_dir() / "prefect").stop()
    console.print(f"Prefect server: {'stopped ' + str(pid) if pid else 'not running'}")
    demo_event.forget()
