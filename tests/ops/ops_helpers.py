"""Helpers of the ops tests: the real `hubfleet` CLI, worker processes, a webhook receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
# The command installed next to this interpreter (`.venv/bin`, or a shared venv).
HUBFLEET = str(Path(sys.executable).parent / "hubfleet")
POOL = "hubfleet-test"
#: Short, so the zombie test waits under a minute after the kill (heartbeats are every 30 s).
ZOMBIE_AFTER = timedelta(seconds=45)


#: API URL -> credential of the servers the tests started (each requires its own).
CREDENTIALS: dict[str, str] = {}


def cli_env(api_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "HUBFLEET_FLEET": str(REPO / "fleet")}
    env.pop("PREFECT_API_AUTH_STRING", None)
    if api_url in CREDENTIALS:
        env["PREFECT_API_AUTH_STRING"] = CREDENTIALS[api_url]
    env.update(extra)
    return env


def run_cli(api_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the real `hubfleet` command; fails the test after 5 minutes, never hangs."""
    return subprocess.run(
        [HUBFLEET, *args],
        env=cli_env(api_url, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


class Workers:
    """`hubfleet worker` processes started by a test, stopped by PID at the end."""

    def __init__(self, api_url: str, log_dir: Path) -> None:
        self.api_url = api_url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, pool: str = POOL, limit: int | None = None, cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed by OS
        extra = ["--limit", str(limit)] if limit else []
        proc = subprocess.Popen(
            [HUBFLEET, "worker", "--pool", pool, "--name", name, *extra],
            env=cli_env(self.api_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
        self.procs.append(proc)
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.log"

    def kill_hard(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process under it: a machine lost mid-run."""
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                continue
            try:
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            except psutil.NoSuchProcess:
                continue
            for member in family:
                try:
                    member.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _gone, alive = psutil.wait_procs(family, timeout=20)
            for member in alive:
                member.kill()
            proc.wait(timeout=10)
