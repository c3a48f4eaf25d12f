"""Benchmark event-hub expiry latency: scheduled time -> teardown started, with a worker.

Each round deploys the local `workshop` event hub (a real JupyterHub), schedules its
`expire_event_hub` run through the registered deployment a few seconds ahead (as
`create_event_hub` does at end + grace), and a real `prefect worker` (process pool, polling
every PREFECT_WORKER_QUERY_SECONDS, default 10 s as in production unless --query-seconds)
picks it up. Latency = start of the `teardown_hub` subflow - the run's scheduled time; it
includes the worker's poll, the flow-run process start, fleet load, health snapshot and
export. Target: median <= 30 s.

Usage: .venv/bin/python benchmarks/bench_event_expiry.py [--rounds 3] [--query-seconds 10]
Writes benchmarks/results/event_expiry.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "events"))


def timed_fleet(root: Path) -> None:
    """The example fleet with the workshop event already over (end 1 h ago, no grace)."""
    shutil.copytree(REPO / "fleet", root)
    path = root / "clusters" / "local" / "cluster.yaml"
    head, _, _ = path.read_text().partition("  - name: workshop")
    end = datetime.now(UTC) - timedelta(hours=1)
    path.write_text(
        head + "  - name: workshop\n    domain: workshop.local.hubfleet.test\n    tier: prod\n"
        "    kind: event\n    event:\n"
        f"      start: {(end - timedelta(hours=2)).isoformat(timespec='seconds')}\n"
        f"      end: {end.isoformat(timespec='seconds')}\n"
        "      attendees: 3\n      organizers: [organizer@example.org]\n"
        "      data_policy: export\n      grace: PT0S\n      reminders: []\n"
    )


async def one_round(lead: float) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.deployments import arun_deployment

    from flows.deploy_hub import deploy_hub
    from tasks.event_schedule import DEPLOYMENTS

    await deploy_hub("local", "workshop", operator="bench")
    at = datetime.now(UTC) + timedelta(seconds=lead)
    run = await arun_deployment(
        DEPLOYMENTS["expire"],
        parameters={"cluster": "local", "hub": "workshop"},
        scheduled_time=at,
        timeout=0,
        as_subflow=False,
    )
    deadline = time.monotonic() + 300
    async with get_client() as client:
        while time.monotonic() < deadline:
            current = await client.read_flow_run(run.id)
            if current.state and current.state.is_final():
                break
            await asyncio.sleep(1)
        else:
            raise SystemExit("expire run did not finish within 300 s")
        if not current.state.is_completed():
            raise SystemExit(f"expire run ended {current.state.type}: {current.state.message}")
        (teardown,) = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["teardown_hub"])),
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            ),
        )
    assert current.start_time and teardown.start_time
    return {
        "picked_up_s": (current.start_time - at).total_seconds(),
        "teardown_started_s": (teardown.start_time - at).total_seconds(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--query-seconds", type=int, default=10)
    parser.add_argument("--lead", type=float, default=5.0, help="schedule this far ahead (s)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubfleet-bench-expiry-"))
    os.environ["HUBFLEET_DATA_DIR"] = str(work / "data")
    os.environ["HUBFLEET_FLEET"] = str(work / "fleet")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = str(args.query_seconds)
    timed_fleet(work / "fleet")

    # tests/events/conftest.py: the same registration and worker as the tests
    from conftest import POOL, Worker, register_event_deployments
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks import local_hub as lh

    stop = threading.Event()

    def reap() -> None:  # hubs started here are our children: reap them once stopped
        while not stop.is_set():
            for popen in list(lh._children.values()):
                popen.poll()
            stop.wait(0.2)

    threading.Thread(target=reap, daemon=True).start()
    rounds: list[dict[str, float]] = []
    with prefect_test_harness(server_startup_timeout=120):
        register_event_deployments(POOL)
        worker = Worker(POOL, str(PREFECT_API_URL.value()), work / "worker.log")
        worker.start()
        try:
            for i in range(args.rounds):
                result = asyncio.run(one_round(args.lead))
                print(f"round {i + 1}: {result}", flush=True)
                rounds.append(result)
        finally:
            worker.stop()
            stop.set()
            for state in (work / "data" / "hubs").glob("*/*/state.json"):
                lh.LocalHub(state.parent, state.parent.name).stop()
    latencies = [r["teardown_started_s"] for r in rounds]
    out = {
        "benchmark": "event_expiry",
        "what": "scheduled time of expire_event_hub -> teardown_hub started (s)",
        "worker_query_seconds": args.query_seconds,
        "rounds": rounds,
        "median_s": round(statistics.median(latencies), 2),
        "max_s": round(max(latencies), 2),
        "target_median_s": 30,
        "meets_target": statistics.median(latencies) <= 30,
        "machine": f"{os.cpu_count()} cores",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "event_expiry.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
