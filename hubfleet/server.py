"""The Prefect server hubfleet starts, and the one place every client finds it.

The embedded default is SQLite under the data dir, on loopback; `hubfleet server
--postgres` is the same server on PostgreSQL (hubfleet/pgserver.py). Either is started
detached so it outlives the CLI (the UI stays browsable after `hubfleet demo`), reused when
already running, restarted on the port it last had, and stopped by PID.

Authentication is always on: at first start a credential (`hubfleet:<random>`) is written
0600 to `<home>/api-auth`; the server requires it (Prefect's
`PREFECT_SERVER_API_AUTH_STRING`, HTTP Basic) on every API route but `/api/health` and
`/api/ready`, and `connect()` hands it to the CLI, the worker and everything they start
(`PREFECT_API_AUTH_STRING`). The key that encrypts block secrets is kept out of the
database (`block-encryption-key`, see `encryption_key`). The data dir, the database, the
credential and the key are private to the user (0700/0600), tightened when they exist.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from hubfleet.errors import HubfleetError
from hubfleet.paths import data_dir, private_dir, private_file

if TYPE_CHECKING:
    from hubfleet.pgserver import Postgres

START_TIMEOUT = 120.0
DEFAULT_PORT = 4200
AUTH_USER = "hubfleet"
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: Files of a SQLite server that hold run data and Prefect's block encryption key.
_DB_FILES = ("prefect.db", "prefect.db-wal", "prefect.db-shm", "prefect.db-journal")


class ServerError(HubfleetError):
    """The Prefect server could not be started."""


@dataclass
class PrefectServer:
    """A Prefect server whose state (PID, port, credential, logs) lives in `home`.

    port: None means the port it last ran on (recorded in server.json), else 4200.
    database_url: None means SQLite in `home`.
    """

    home: Path
    port: int | None = None
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.port is None:
            recorded = self._recorded()
            self.port = recorded[2] if recorded else DEFAULT_PORT

    @property
    def state_file(self) -> Path:
        return self.home / "server.json"

    @property
    def auth_file(self) -> Path:
        return self.home / "api-auth"

    @property
    def key_file(self) -> Path:
        return self.home / "block-encryption-key"

    def encryption_key(self) -> str | None:
        """The key Prefect encrypts block secrets with, kept beside (not in) the database.

        `$PREFECT_SERVER_ENCRYPTION_KEY` wins (the operator keeps it, e.g. in a secret
        store). Else a server's first start writes one 0600 to `key_file`, so a copy of
        the database alone does not reveal a secret. A database created before hubfleet
        did this holds its own key (None here): Prefect keeps using it.
        """
        if os.environ.get("PREFECT_SERVER_ENCRYPTION_KEY"):
            return os.environ["PREFECT_SERVER_ENCRYPTION_KEY"]
        if self.key_file.is_file():
            return self.key_file.read_text().strip()
        first_start = (
            not (self.home / "server.log").exists() and not (self.home / "prefect.db").exists()
        )
        if not first_start:
            return None
        from cryptography.fernet import Fernet

        private_file(self.key_file, Fernet.generate_key().decode() + "\n")
        return self.key_file.read_text().strip()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credential(self) -> str:
        """The API credential (`user:password`), created 0600 at first use."""
        if not self.auth_file.is_file():
            private_dir(self.home)
            private_file(self.auth_file, f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")
        private_file(self.auth_file)
        return self.auth_file.read_text().strip()

    def rotate_credential(self) -> None:
        """A new credential; the running server keeps the old one until it restarts."""
        private_file(self.auth_file, f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")

    def client_env(self) -> dict[str, str]:
        """What a client process needs to talk to this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_API_AUTH_STRING": self.credential()}

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
        import requests  # here: the CLI's fast commands import this module

        try:
            return requests.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def tighten(self) -> None:
        """The data dir 0700 and every file holding a secret 0600, whatever existed."""
        private_dir(self.home.parent)
        private_dir(self.home)
        for name in (*_DB_FILES, self.auth_file.name, self.key_file.name):
            if (self.home / name).exists():
                private_file(self.home / name)

    def ensure(self, progress: object = print) -> bool:
        """Start the server unless ours is already running; returns True if reused.

        A restart binds the port it had: a port left in TIME_WAIT by the dead server is
        free; a port another program listens on is an error naming it, never a silent move.
        """
        if self.pid() and self.healthy():
            self.tighten()
            return True
        self.stop()
        assert self.port is not None
        if not port_free(self.port):
            raise ServerError(
                f"port {self.port} is in use by another program ({port_owner(self.port)}), so "
                f"the Prefect server in {self.home} cannot start there; stop that program, or "
                "start the server on another port (hubfleet server --port N / hubfleet demo "
                "--port N): clients follow it (they read the port from "
                f"{self.state_file})"
            )
        self.tighten()
        key = self.encryption_key()
        database = self.database_url or f"sqlite+aiosqlite:///{self.home}/prefect.db"
        env = {
            **os.environ,
            **self.extra_env,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_SERVER_API_AUTH_STRING": self.credential(),
            # Lock leases on disk (PREFECT_HOME/concurrency_leases): a restarted server
            # still expires the leases of runs that died with it (tasks/locks.py).
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_UI_URL": self.ui_url,
        }
        if key:
            env["PREFECT_SERVER_ENCRYPTION_KEY"] = key
        for client_only in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"):
            env.pop(client_only, None)
        with open(self.home / "server.log", "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, umask=0o077,
            )  # fmt: skip
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
                self.tighten()
                return False
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"prefect server not healthy after {START_TIMEOUT:g}s; see server.log")

    def stop(self) -> int | None:
        """Stop our server (and its children) by PID; returns the PID stopped.

        The state file keeps the port, so the next start binds the same one.
        """
        pid = self.pid()
        if pid is None:
            return None
        stop_family(psutil.Process(pid), timeout=15)
        return pid


def stop_family(proc: psutil.Process, timeout: float) -> None:
    """SIGTERM `proc` and every process under it; SIGKILL what is left after `timeout`."""
    family = [proc, *proc.children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    for member in alive:
        member.kill()
    psutil.wait_procs(alive, timeout=5)


def local_server() -> PrefectServer:
    """The embedded default: SQLite under the data dir."""
    return PrefectServer(data_dir() / "prefect")


def connect(start: bool = True) -> str:
    """Point this process (and every process it starts) at the Prefect API; its URL.

    The one place clients find the server: `$PREFECT_API_URL` when set (its credential from
    `$PREFECT_API_AUTH_STRING`, or `$PREFECT_API_KEY` for Prefect Cloud, or the credential
    file of a hubfleet server on this machine at that URL); else `hubfleet server
    --postgres` if it runs here; else the embedded SQLite server, started if `start`.
    """
    url = _find_api(start)
    # While its database restarts, the server answers 500 (Prefect maps only its own
    # errors to 503). Retried like a 503 (5 tries, about a minute of backoff), a run rides
    # out a PostgreSQL restart instead of dying unable to record its own end.
    os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
    if "prefect.context" in sys.modules:
        # Prefect read its settings from the environment when it was imported: have it
        # read them again (else it would start a temporary server of its own).
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return url


def postgres_stack(root: Path, port: int | None = None) -> tuple[Postgres, PrefectServer]:
    """PostgreSQL (hubfleet/pgserver.py) and the Prefect server on it, with event retention:
    `hubfleet server --postgres`, for scale-out."""
    from hubfleet.pgserver import RETENTION_ENV, Postgres

    pg = Postgres(root / "postgres")
    server = PrefectServer(
        root / "prefect-pg", port=port, database_url=pg.url, extra_env=dict(RETENTION_ENV)
    )
    return pg, server


def _find_api(start: bool) -> str:
    _pg, on_postgres = postgres_stack(data_dir())
    candidates = [on_postgres, local_server()]
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not (os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_API_KEY")):
            for server in candidates:
                if server.api_url == url.rstrip("/") and server.auth_file.is_file():
                    os.environ["PREFECT_API_AUTH_STRING"] = server.credential()
        return url
    if on_postgres.pid() is not None:
        os.environ.update(on_postgres.client_env())
        return on_postgres.api_url
    server = candidates[1]
    if start:
        server.ensure()
    os.environ.update(server.client_env())
    return server.api_url


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` now (as uvicorn does, with SO_REUSEADDR,
    so a port whose last connections are in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_owner(port: int) -> str:
    """Who listens on `port`, as far as this user can see."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid}, {' '.join(psutil.Process(conn.pid).cmdline())[:80]}"
    except (psutil.Error, OSError):
        pass
    return "owner not visible"


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
