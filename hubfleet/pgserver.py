"""Scale-out: the Prefect server on PostgreSQL (`hubfleet server --postgres`).

PostgreSQL comes from Debian (`apt-get install postgresql`; `./dev setup` does it). hubfleet
runs its own cluster under `$HUBFLEET_DATA_DIR/postgres`: it listens on a private Unix
socket only (no TCP port, so no password exists to leak), and is started and stopped by
PID. `initdb` and `postgres` refuse to run as root, so as root they run as the unprivileged
`postgres` user that the Debian package creates, with the cluster under that user's home.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import psutil

from hubfleet.errors import HubfleetError

#: Server settings for the audit log: flow runs are never vacuumed (they are the record);
#: events (heartbeats, state-change events) are working data, kept 7 days.
RETENTION_ENV = {
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events",
    "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "P7D",
}


#: hubfleet's index on Prefect's flow_run.tags (Postgres.ensure_audit_index).
AUDIT_INDEX = "hubfleet_ix_flow_run__tags"


class PostgresError(HubfleetError):
    """PostgreSQL is missing or would not start; the message says what to do."""


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary from Debian's versioned directory (newest version)."""
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    raise PostgresError(
        f"PostgreSQL's {name} not found: install it with `sudo apt-get install postgresql` "
        "(or run ./dev setup as root)"
    )


@dataclass
class Postgres:
    """hubfleet's own PostgreSQL cluster, reachable only through its socket directory."""

    home: Path

    @property
    def cluster_dir(self) -> Path:
        """Where the cluster lives. As root, under the `postgres` user's home: that user
        cannot traverse root's private directories (/root, pytest's tmp)."""
        user = self._user()
        if user is None:
            return self.home
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return Path(user.pw_dir) / f"hubfleet-{digest}"

    @property
    def data(self) -> Path:
        return self.cluster_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.cluster_dir / "run"

    @property
    def state_file(self) -> Path:
        return self.home / "postgres.json"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://prefect@/prefect?host={self.socket_dir}"

    def _user(self) -> pwd.struct_passwd | None:
        """Who runs the server: as root, the unprivileged `postgres` user; else ourselves."""
        if os.getuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError(
                "running as root, but there is no 'postgres' user to run PostgreSQL as "
                "(initdb refuses root); install Debian's postgresql package"
            ) from None

    def pid(self) -> int | None:
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        try:
            proc = psutil.Process(int(data["pid"]))
            if proc.create_time() != data["started"] or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return int(data["pid"])

    def _ready(self) -> bool:
        result = subprocess.run(
            [pg_bin("pg_isready"), "-h", str(self.socket_dir), "-U", "prefect", "-d", "prefect"],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def ensure(self) -> bool:
        """Initialise (first time) and start the cluster unless running; True if reused."""
        if self.pid() and self._ready():
            return True
        user = self._user()
        self.home.mkdir(parents=True, exist_ok=True)
        for directory in (self.cluster_dir, self.data, self.socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            if user:
                os.chown(directory, user.pw_uid, user.pw_gid)
        uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
        if not (self.data / "PG_VERSION").is_file():
            subprocess.run(
                [pg_bin("initdb"), "-D", str(self.data), "-U", "prefect", "--auth=trust"],
                check=True,
                capture_output=True,
                timeout=120,
                cwd="/",
                user=uid,
                group=gid,
            )
        log = open(self.home / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        popen = subprocess.Popen(
            [
                pg_bin("postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.socket_dir),
                "-c",
                "listen_addresses=",  # the socket only: nothing on the network
                "-c",
                "unix_socket_permissions=0700",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
            user=uid,
            group=gid,
        )
        log.close()
        started = psutil.Process(popen.pid).create_time()
        self.state_file.write_text(json.dumps({"pid": popen.pid, "started": started}))
        deadline = time.monotonic() + 60
        while not self._ready():
            if popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"PostgreSQL did not start; see {self.home}/postgres.log")
            time.sleep(0.3)
        exists = subprocess.run(
            [pg_bin("psql"), "-h", str(self.socket_dir), "-U", "prefect", "-d", "postgres",
             "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'prefect'"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        if exists.stdout.strip() != "1":
            subprocess.run(
                [pg_bin("createdb"), "-h", str(self.socket_dir), "-U", "prefect", "prefect"],
                check=True,
                capture_output=True,
                timeout=30,
            )
        return False

    def ensure_audit_index(self) -> bool:
        """The index `hubfleet audit` needs on Prefect's `flow_run.tags`; True if created.

        Prefect indexes runs by time and state but not by tag, so a hub's history (a
        `hub:` tag) was a scan of the runs in its time window: 1.2 s for a hub's year
        out of 1,000,000 runs (benchmarks/bench_audit.py). A GIN index (default
        `jsonb_ops`) serves both the API's filter (`tags ?& ...`) and the database
        source's (`tags @> ...`). Call it after the Prefect server has created its tables;
        it is idempotent and is built without blocking the server's writes (CONCURRENTLY).
        An extra index on Prefect's table changes no query's result, and Prefect's
        migrations neither need nor drop it.
        """

        def psql(sql: str) -> str:
            return subprocess.run(
                [pg_bin("psql"), "-h", str(self.socket_dir), "-U", "prefect", "-d", "prefect",
                 "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                capture_output=True, text=True, timeout=3600, check=True,
            ).stdout.strip()  # fmt: skip

        found = psql(
            "SELECT indisvalid FROM pg_index JOIN pg_class c ON c.oid = indexrelid "
            f"WHERE c.relname = '{AUDIT_INDEX}'"
        )
        if found == "t":
            return False
        if found == "f":  # an interrupted concurrent build leaves an invalid index
            psql(f"DROP INDEX CONCURRENTLY {AUDIT_INDEX}")
        psql(f"CREATE INDEX CONCURRENTLY {AUDIT_INDEX} ON flow_run USING gin (tags)")
        return True

    def remove(self) -> None:
        """Stop the cluster and delete its data (tests, benchmarks)."""
        self.stop()
        shutil.rmtree(self.cluster_dir, ignore_errors=True)

    def stop(self) -> int | None:
        """Fast shutdown (SIGINT) by PID; SIGKILL only if it does not stop in 30 s."""
        pid = self.pid()
        if pid is None:
            self.state_file.unlink(missing_ok=True)
            return None
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except psutil.TimeoutExpired:
            for member in [proc, *proc.children(recursive=True)]:
                member.kill()
        self.state_file.unlink(missing_ok=True)
        return pid
