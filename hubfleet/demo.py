"""`hubfleet demo`: the whole pipeline on this machine, and `--down` to stop it all."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console

from hubfleet.errors import HubfleetError
from hubfleet.interrupt import run_interruptible
from hubfleet.model import Fleet, Hub, Provider
from hubfleet.paths import data_dir
from hubfleet.server import PrefectServer


def _local_hubs(fleet: Fleet) -> list[tuple[str, Hub]]:
    hubs = [(c.name, h) for c in fleet.clusters if c.provider is Provider.local for h in c.hubs]
    if not hubs:
        raise HubfleetError(
            "the fleet has no hubs on a cluster with 'provider: local'; the demo deploys those "
            "(see fleet/clusters/local/cluster.yaml in the example fleet)"
        )
    return hubs


def up(fleet: Fleet, port: int | None, console: Console) -> None:
    """Start (or reuse) the Prefect server, deploy every local hub, check them, show a table."""
    from hubfleet.cli import hub_table
    from hubfleet.localhub import local_values

    hubs = _local_hubs(fleet)
    for cluster, hub in hubs:  # a broken values file: its file:line, before anything starts
        local_values(fleet, cluster, hub)
    server = PrefectServer(data_dir() / "prefect", port)
    started = time.monotonic()
    with console.status("starting the Prefect server (SQLite)…"):
        reused = server.ensure()
    console.print(
        f"Prefect server {'reused' if reused else 'started'} at {server.ui_url} "
        f"(data in {server.home})"
    )
    os.environ.update(server.client_env())
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
    console.print("Stop everything: hubfleet demo --down")
    if any(row["verdict"] != "healthy" for row in rows):
        raise SystemExit(1)


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
                console.print(f"deploy_hub {cluster}/{hub.name}: {result['action']}")
            except Exception as exc:  # one failing hub never stops the others
                failures[hub.name] = str(exc)
                console.print(f"[red]deploy_hub {cluster}/{hub.name} failed:[/] {exc}")
    rows = []
    for cluster, hub in hubs:
        with console.status(f"check_hub_health {cluster}/{hub.name}…"):
            report = await check_hub_health(cluster=cluster, hub=hub.name)
        rows.append(
            {
                "hub": report["hub"],
                "tier": hub.tier.value,
                "kind": hub.kind.value,
                "url": report["url"],
                "verdict": report["verdict"],
                "latency_ms": report["latency_ms"],
                "reason": failures.get(hub.name, report["reason"]),
            }
        )
    return rows


def down(fleet: Fleet, console: Console) -> None:
    """Stop every hub process and the Prefect server the demo started (by PID)."""
    from tasks.local_hub import local_hub

    for cluster, hub in _local_hubs(fleet):
        stopped = local_hub(fleet, cluster, hub.name).stop()
        console.print(
            f"{cluster}/{hub.name}: " + (f"stopped {stopped}" if stopped else "not running")
        )
    pid = PrefectServer(data_dir() / "prefect").stop()
    console.print(f"Prefect server: {'stopped ' + str(pid) if pid else 'not running'}")
