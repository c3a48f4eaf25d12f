"""Cloud emulators for tests: moto server (AWS IAM, STS, S3) with auth enforced, and
Azurite (Azure Blob). Both run as real servers on a free port of one local address, are
stopped by PID, and die with the test process (parent-death signal).

The address is loopback unless a test names another one of this machine's addresses
(``host=``): the real node's host-side veth address (``RealNode.host_ip``), so pods on
the node reach the emulator. A wildcard (``0.0.0.0``, ``::``) is refused: an emulator
never listens on every interface, where other machines could reach it."""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import build
from ._proc import Component, log_tail, pdeathsig_preexec, proc_starttime, terminate_pids


class EmulatorError(RuntimeError):
    """An emulator failed to start (message carries its log tail)."""


LOOPBACK = "127.0.0.1"


def listen_address(host: str) -> str:
    """`host` if it is one IPv4 address (not a wildcard); raise ValueError otherwise."""
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"emulator host {host!r} is not an IPv4 address: give one local address "
            "(127.0.0.1, or the real node's host_ip)"
        ) from None
    if addr.is_unspecified:
        raise ValueError(
            f"emulator host {host!r} is a wildcard: it would listen on every interface; give "
            "one local address (127.0.0.1, or the real node's host_ip)"
        )
    return str(addr)


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _Server:
    """A child process on a port of one local address, with a log file in a private temp
    dir. The address must be one of this machine's (binding the free port proves it)."""

    name = "server"

    def __init__(self, port: int | None = None, start_timeout: float = 60.0, host: str = LOOPBACK):
        self.host = listen_address(host)
        self.port = port or _free_port(self.host)
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.component: Component | None = None
        self._atexit = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hubfleet-{self.name}-"))
        log = self.workdir / f"{self.name}.log"
        with log.open("wb") as f:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )
        self.component = Component(self.name, p.pid, proc_starttime(p.pid), str(log), p)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        deadline = time.monotonic() + self.start_timeout
        while not _port_open(self.port, self.host):
            if not self.component.alive():
                msg = f"{self.name} exited during startup; log tail:\n{log_tail(log)}"
                self.stop()
                raise EmulatorError(msg)
            if time.monotonic() > deadline:
                msg = (
                    f"{self.name} did not listen on {self.host}:{self.port} "
                    f"in {self.start_timeout:.0f}s:\n{log_tail(log)}"
                )
                self.stop()
                raise EmulatorError(msg)
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server by PID and remove its temp dir."""
        if self.component is not None:
            terminate_pids([self.component], timeout=10)
            self.component = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def pid(self) -> int | None:
        return self.component.pid if self.component else None


class MotoServer(_Server):
    """moto in server mode with authentication enforced.

    moto lets the first ``INITIAL_NO_AUTH_ACTION_COUNT`` requests through unauthenticated;
    we spend exactly those on bootstrapping an admin IAM user (create user, attach an
    allow-all inline policy, create an access key). From then on every request must be
    signed with valid keys and is checked against IAM policies, like real AWS.

    Attributes after start(): ``endpoint_url``, ``region``, ``access_key_id``,
    ``secret_access_key`` (the admin's), ``admin_user``.
    """

    name = "moto"
    BOOTSTRAP_ACTIONS = 3

    def __init__(
        self,
        port: int | None = None,
        region: str = "us-east-1",
        start_timeout: float = 60.0,
        host: str = LOOPBACK,
    ):
        super().__init__(port, start_timeout, host)
        self.region = region
        self.admin_user = "hubfleet-admin"
        self.access_key_id: str | None = None
        self.secret_access_key: str | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        env = dict(os.environ)
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.BOOTSTRAP_ACTIONS)
        # Never pick up a developer's real AWS credentials or config.
        for k in [k for k in env if k.startswith("AWS_")]:
            del env[k]
        self._spawn(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)], env=env
        )
        try:
            self._bootstrap_admin()
        except BaseException:
            self.stop()
            raise
        return self

    def _bootstrap_admin(self) -> None:
        import boto3  # moto[server] depends on it

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName=self.admin_user)
        iam.put_user_policy(
            UserName=self.admin_user,
            PolicyName="admin",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName=self.admin_user)["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(
        self, service: str, access_key_id: str | None = None, secret_access_key: str | None = None
    ) -> Any:
        """A boto3 client against this server (admin keys unless others are given)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs/CLIs at this server with admin keys."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id or "",
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key or "",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }


# The Azurite development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class Azurite(_Server):
    """Azurite's blob service (npm, pinned in versions.toml), in memory.

    Attributes after start(): ``blob_endpoint``, ``account_name``, ``account_key``,
    ``connection_string``.
    """

    name = "azurite"

    def __init__(self, port: int | None = None, start_timeout: float = 60.0, host: str = LOOPBACK):
        super().__init__(port, start_timeout, host)
        self.account_name = AZURITE_ACCOUNT
        self.account_key = AZURITE_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> Azurite:
        script = build.ensure_azurite()
        node = shutil.which("node")
        if node is None:
            raise EmulatorError("node is not on PATH (Azurite needs Node.js >= 18)")
        # --inMemoryPersistence cannot be combined with --location; nothing touches disk.
        # --skipApiVersionCheck: azure-storage-blob may speak a newer API version than
        # Azurite knows.
        self._spawn(
            [
                node,
                str(script.resolve()),
                "--blobHost",
                self.host,
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--silent",
            ]
        )
        return self
