"""The embedded default's Prefect server: SQLite under the data dir, on loopback.

Started detached so it outlives the CLI (the UI stays browsable after `hubfleet demo`),
reused when already running, and stopped by PID with `hubfleet demo --down`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from hubfleet.errors import HubfleetError

START_TIMEOUT = 90.0


class ServerError(HubfleetError):
    """The Prefect server could not be started."""


@dataclass
class PrefectServer:
    home: Path
    port: int = 4200

    @property
    def state_file(self) -> Path:
        return self.home / "server.json"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _recorded(self) -> tuple[int, float, int] | None:
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        return int(data["pid"]), float(data["started"]), int(data["port"])

    def pid(self) -> int | None:
        """PID of the server we started, if it is still that process and alive."""
        recorded = self._recorded()
        if not recorded:
            return None
        pid, started, port = recorded
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        self.port = port
        return pid

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def ensure(self, progress: object = print) -> bool:
        """Start the server unless ours is already running; returns True if reused."""
        if self.pid() and self.healthy():
            return True
        self.stop()
        if not _port_free(self.port):
            self.port = _any_free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home}/prefect.db",
        }
        env.pop("PREFECT_API_URL", None)
        with open(self.home / "server.log", "ab") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = psutil.Process(popen.pid).create_time()
        self.state_file.write_text(
            json.dumps({"pid": popen.pid, "started": started, "port": self.port})
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise ServerError(
                    f"prefect server exited with {popen.returncode}; see {self.home}/server.log"
                )
            if self.healthy():
                return False
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"prefect server not healthy after {START_TIMEOUT:g}s; see server.log")

    def stop(self) -> int | None:
        """Stop our server (and its workers) by PID; returns the PID stopped."""
        pid = self.pid()
        if pid is None:
            return None
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
        for member in family:
            try:
                member.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(family, timeout=15)
        for member in alive:
            member.kill()
        psutil.wait_procs(alive, timeout=5)
        self.state_file.unlink(missing_ok=True)
        return pid


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
