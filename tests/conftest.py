"""Shared fixtures: one real Prefect server for the session, a private data dir, and a
final check that no test left a process running."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from testenv.chartrepo import NEXT_VERSION, ChartRepository

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A loaded 2-core machine (the suite beside builds and other suites) makes the SQLite test
# server wait on its write lock: give it longer than the default 10 s before it answers 503,
# and clients more retries of a 503 (each one backs off) before a test sees it.
os.environ.setdefault("PREFECT_API_DATABASE_TIMEOUT", "60")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")

REPO = Path(__file__).resolve().parent.parent

# The Kubernetes/helm/terraform/emulator fixtures (testenv/).
pytest_plugins = ["testenv.pytest_plugin"]


#: Test directories run by parallel workers (`./dev test` runs pytest-xdist with
#: `--dist loadgroup`), longest first so the longest does not start last. A directory stays
#: in one worker, in its own order (its tests may build on each other, e.g. the secret scan
#: of tests/credentials runs last there); every test that needs the real node is in the
#: "node" group, since one machine runs one node.
GROUP_ORDER = ("node", "ops", "events", "helm", "integration", "credentials", "health")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def group(item: pytest.Item) -> str:
        if item.get_closest_marker("node"):
            return "node"
        parts = Path(str(item.path)).relative_to(REPO / "tests").parts
        return parts[0] if len(parts) > 1 else "top"

    def rank(item: pytest.Item) -> int:
        name = group(item)
        return GROUP_ORDER.index(name) if name in GROUP_ORDER else len(GROUP_ORDER)

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=rank)  # stable: each directory keeps its own order


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """In a worker of `--dist loadgroup`, stop if xdist did not group the tests: spread
    over all workers, the node tests would start one real node per worker at once."""
    grouping = getattr(session.config.option, "loadgroup", False)
    if grouping and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError(
            "pytest-xdist did not group the tests (--dist loadgroup): this pytest "
            f"({pytest.__version__}) does not let xdist mark the groups; install the "
            "versions pyproject.toml pins (./dev test does)"
        )


def _ours(proc: psutil.Process, *markers: str) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        env = proc.environ() if proc.uids().real == os.getuid() else {}
        return any(
            marker in proc.cwd()
            or any(marker in arg for arg in proc.cmdline())
            or marker in env.get("PREFECT_HOME", "")
            for marker in markers
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


#: The upstream Zero to JupyterHub chart as released (its README says how it was made).
SHARED_CHARTS = REPO.parent / "shared" / "charts"


@pytest.fixture(scope="session", autouse=True)
def chart_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRepository]:
    """The z2jh chart repository hubfleet fetches from, served on loopback from
    `../shared/charts` (this machine cannot reach hub.jupyter.org), plus a copy of 4.4.0
    published as NEXT_VERSION for upgrades and canaries. Subprocesses inherit it."""
    repo = ChartRepository(SHARED_CHARTS.glob("*.tgz"), tmp_path_factory.mktemp("chart-repo"))
    repo.add_version(SHARED_CHARTS / "jupyterhub-4.4.0.tgz", NEXT_VERSION)
    os.environ["HUBFLEET_CHART_REPOSITORY"] = repo.url
    yield repo
    os.environ.pop("HUBFLEET_CHART_REPOSITORY", None)
    repo.stop()


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test's hub state lives under one data dir; at the end nothing of ours runs.

    Set up first, so torn down last: after the Prefect server and the control plane stop.
    Run as root, local hubs keep their users' homes outside the data dir (the account that
    runs user servers must reach them): this session's go to a temp dir of its own (0711,
    as hubfleet/localusers.py lays out the homes), removed at the end; a user server
    found working there is ours too.
    """
    data = tmp_path_factory.mktemp("hubfleet-data")
    os.environ["HUBFLEET_DATA_DIR"] = str(data)
    homes = tempfile.mkdtemp(prefix="hubfleet-homes-")
    os.chmod(homes, 0o711)
    os.environ["HUBFLEET_HOMES_DIR"] = homes
    yield data
    me = psutil.Process()
    left = [p for p in me.children(recursive=True) if p.is_running() and p.status() != "zombie"]
    left += [p for p in psutil.process_iter() if p.pid != me.pid and _ours(p, str(data), homes)]
    described = sorted({f"{p.pid}: {' '.join(p.cmdline())[:120]}" for p in left if p.is_running()})
    for proc in left:  # clean up anyway, by PID, so one failure does not poison the machine
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    shutil.rmtree(homes, ignore_errors=True)
    assert not described, "tests left processes running:\n" + "\n".join(described)


@pytest.fixture(scope="session")
def prefect_server(no_leftover_processes: Path) -> Iterator[str]:
    """A real Prefect server (SQLite) for the whole session, started as hubfleet starts
    every server: authentication on. Flows run against it; this process and the commands
    the tests start use its credential from the environment, as a remote worker would."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from hubfleet.server import PrefectServer, any_free_port

    server = PrefectServer(no_leftover_processes / "prefect", port=any_free_port())
    server.ensure()
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    os.environ.update(server.client_env())
    try:
        with temporary_settings(
            {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.credential()}
        ):
            yield server.api_url
    finally:
        # Deliver the session's last logs and events while the server still answers: left
        # for interpreter exit, they went to a stopped server, and the client's retries
        # held pytest's exit for minutes ("Error logging to API").
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def data_dir(no_leftover_processes: Path) -> Path:
    return no_leftover_processes
