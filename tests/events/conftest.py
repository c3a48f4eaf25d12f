"""Fixtures for event-hub flow tests: a fleet whose event is timed relative to now, the
event deployments on a process work pool (as `hubfleet setup` registers them), a real
`prefect worker` process, and a local webhook receiving the notification block's calls."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from webhook import Webhook

from hubfleet.paths import REPO_ROOT
from tasks.local_hub import LocalHub

POOL = "hubfleet-events-test"


@pytest.fixture(autouse=True)
def stop_hubs_after_test(data_dir: Path) -> Iterator[None]:
    """Whatever a test asserts, its hubs are stopped (by PID) when it ends."""
    yield
    for state in (data_dir / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


EventWriter = Callable[..., Path]


@pytest.fixture
def event_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EventWriter:
    """A copy of the example fleet; call it to (re)time the workshop event. Returns the root."""
    root = tmp_path / "fleet"
    shutil.copytree(REPO_ROOT / "fleet", root)
    cluster_file = root / "clusters" / "local" / "cluster.yaml"
    original = cluster_file.read_text()
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))

    def write(
        *,
        start: datetime,
        end: datetime,
        grace: str = "PT5S",
        reminders: str = "[]",
        data_policy: str = "export",
        present: bool = True,
    ) -> Path:
        head, _, _ = original.partition("  - name: workshop")
        event = (
            "  - name: workshop\n"
            "    domain: workshop.local.hubfleet.test\n"
            "    tier: prod\n"
            "    kind: event\n"
            "    event:\n"
            f"      start: {iso(start)}\n"
            f"      end: {iso(end)}\n"
            "      attendees: 3\n"
            "      organizers: [organizer@example.org]\n"
            f"      data_policy: {data_policy}\n"
            f"      grace: {grace}\n"
            f"      reminders: {reminders}\n"
            "      timezone: Europe/Paris\n"
        )
        cluster_file.write_text(head + event if present else head.rstrip() + "\n")
        return root

    return write


def register_event_deployments(pool: str = POOL, fleet_root: Path | None = None) -> str:
    """The event deployments registered exactly as `hubfleet setup` does, on `pool`.

    Their parameter schema lists the fleet's clusters and hubs: `fleet_root` (default the
    example fleet) is the fleet whose names runs may use."""
    import asyncio

    from prefect.client.orchestration import get_client

    from deployments.registry import EVENT_OPERATIONS
    from deployments.setup import (
        HEARTBEAT_SECONDS,
        SetupReport,
        deployment_payload,
        ensure_deployment,
        ensure_work_pool,
    )
    from hubfleet.loader import load_fleet

    async def register() -> None:
        fleet = load_fleet(fleet_root or REPO_ROOT / "fleet")
        report = SetupReport()
        async with get_client() as client:
            await ensure_work_pool(client, pool, HEARTBEAT_SECONDS, report)
            for spec in EVENT_OPERATIONS:
                flow = spec.load()
                payload = deployment_payload(spec, flow, fleet, pool, HEARTBEAT_SECONDS)
                # Tests time their own fleet (HUBFLEET_FLEET, inherited from the worker).
                payload["job_variables"]["env"].pop("HUBFLEET_FLEET")
                payload["schedules"] = []  # the hourly reaper is run by hand here
                await ensure_deployment(client, flow.name, payload, report)

    asyncio.run(register())
    return pool


@pytest.fixture(scope="session")
def register_deployments() -> Callable[..., str]:
    """`register_event_deployments`, for tests that register them for their own fleet."""
    return register_event_deployments


@pytest.fixture(scope="session")
def event_deployments(prefect_server: str) -> str:
    """The event deployments on the test pool (registered once per session)."""
    return register_event_deployments(POOL)


class Worker:
    """A real `prefect worker start` process on the test pool, stopped by PID."""

    def __init__(self, pool: str, api_url: str, log: Path):
        self.pool, self.api_url, self.log = pool, api_url, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        prefect = str(Path(sys.executable).parent / "prefect")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [prefect, "worker", "start", "--pool", self.pool, "--type", "process",
                 "--name", f"events-test-{uuid.uuid4().hex[:6]}"],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while "started!" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise AssertionError(f"prefect worker did not start within 90s:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            family = [self.proc, *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = [self.proc]
        for member in family:
            try:
                os.kill(member.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for member in family[1:]:
            try:
                psutil.Process(member.pid).wait(10)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                try:
                    os.kill(member.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None


@pytest.fixture
def worker(event_deployments: str, prefect_server: str, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(event_deployments, prefect_server, tmp_path / "worker.log")
    w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def webhook(prefect_server: str) -> Iterator[list[dict[str, Any]]]:
    """The fleet's `ops-webhook` notification block, posting to a local receiver."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    with Webhook() as hook:
        CustomWebhookNotificationBlock(
            name="ops-webhook",
            url=hook.url,
            method="POST",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("ops-webhook", overwrite=True)
        yield hook.received


@pytest.fixture
def reap_hub_children() -> Iterator[None]:
    """Reap exited hub processes this test process started, as the CLI's exit does in use.

    A hub started in-process (create_event_hub awaited here) is this process's child; when
    the worker's flow run stops it, it stays a zombie until we reap it, and the stopping
    process (not its parent) would wait on it in vain.
    """
    from tasks import local_hub as lh

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for popen in list(lh._children.values()):
                popen.poll()
            stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
