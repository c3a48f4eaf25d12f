"""Fixtures for the ops tests: a real Prefect server started the way operators run it
(`prefect server start`, with its event, trigger and action services, which the shared
in-process test harness does not run), a webhook receiver, and real `hubfleet worker`
processes. Everything started here is stopped here, by PID."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_helpers import CREDENTIALS, POOL, ZOMBIE_AFTER, Workers, run_cli
from webhook import Webhook

from hubfleet.server import PrefectServer, any_free_port
from tasks.local_hub import LocalHub


@pytest.fixture(scope="session")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def ops_server(
    tmp_path_factory: pytest.TempPathFactory, no_leftover_processes: Path
) -> Iterator[PrefectServer]:
    """A real `prefect server start` (SQLite) under the test's data dir."""
    home = no_leftover_processes / "ops-prefect"
    server = PrefectServer(home, port=any_free_port())
    saved = {k: os.environ.get(k) for k in ("PREFECT_UI_URL", "PREFECT_UI_API_URL")}
    os.environ["PREFECT_UI_URL"] = server.ui_url  # the server renders notification links
    os.environ["PREFECT_UI_API_URL"] = server.api_url  # else the UI calls port 4200
    try:
        server.ensure(progress=lambda *_: None)
        assert os.environ["PREFECT_UI_URL"] == server.ui_url, "port changed while starting"
        CREDENTIALS[server.api_url] = server.credential()
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ops_api(ops_server: PrefectServer) -> str:
    """The ops server's API URL (subprocesses get it explicitly)."""
    return ops_server.api_url


@pytest.fixture(autouse=True)
def _prefect_points_at_ops_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """While an ops test runs, this process's Prefect client talks to the ops server.

    Per test, not per session: the tests collected after these (other directories) must get
    the shared test server back.
    """
    if "ops_api" not in request.fixturenames:
        yield
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api = request.getfixturevalue("ops_api")
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: CREDENTIALS[api]}):
        yield


@pytest.fixture
def workers(ops_api: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(ops_api, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def ops_setup(ops_api: str, webhook: Webhook) -> str:
    """`hubfleet setup` run once for the session, with the test webhook as ops-webhook."""
    result = run_cli(
        ops_api,
        "setup",
        "--pool",
        POOL,
        "--zombie-after",
        str(int(ZOMBIE_AFTER.total_seconds())),
        HUBFLEET_NOTIFY_URL_OPS_WEBHOOK=webhook.url,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def stop_hubs(data_dir: Path) -> Iterator[None]:
    """Whatever a test asserts, the hubs it started are stopped (by PID) when it ends."""
    yield
    for state in (data_dir / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()
