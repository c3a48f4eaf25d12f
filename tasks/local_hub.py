"""The `local` provider: a real JupyterHub process behind configurable-http-proxy per hub.

Each hub lives in one directory (config, sqlite db, cookie secret, homes, logs, and
`state.json` with PIDs and ports). Processes are started in their own session so they
outlive the CLI that started them, and are stopped by PID, never by name.
Secrets reach the processes only through their environment.

Run as root, a hub's user servers run as an unprivileged account with their homes outside
the data dir (hubfleet/localusers.py); the hub and proxy stay root's.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from hubfleet import localusers
from hubfleet.errors import HubfleetError
from hubfleet.localhub import Ports, render_config
from hubfleet.model import Fleet
from hubfleet.paths import cache_dir, local_hubs_dir

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

#: Popen handles of processes this interpreter started, so they are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalHubError(HubfleetError):
    """A local hub could not be started or stopped; the message says why and what to do."""


def find_chp() -> str:
    """configurable-http-proxy: `HUBFLEET_CHP`, PATH, or the copy setup installs."""
    candidates = [
        os.environ.get("HUBFLEET_CHP"),
        shutil.which("configurable-http-proxy"),
        str(cache_dir() / "node" / "node_modules" / ".bin" / "configurable-http-proxy"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise LocalHubError(
        "configurable-http-proxy not found; install it with "
        f"`npm install --prefix {cache_dir() / 'node'} configurable-http-proxy` "
        "(./dev setup does this)"
    )


@dataclass(frozen=True)
class Proc:
    """A process we started: PID plus its start time, so a reused PID is not mistaken."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.started and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


@dataclass(frozen=True)
class HubState:
    """What `state.json` records: no secrets, only where things run."""

    ports: Ports
    hub: Proc | None
    proxy: Proc | None
    config_sha: str = ""
    started_at: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.public}"

    def to_json(self) -> str:
        def proc(p: Proc | None) -> dict[str, float] | None:
            return {"pid": p.pid, "started": p.started} if p else None

        return json.dumps(
            {
                "ports": self.ports.as_dict(),
                "hub": proc(self.hub),
                "proxy": proc(self.proxy),
                "config_sha": self.config_sha,
                "started_at": self.started_at,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> HubState:
        data = json.loads(text)

        def proc(d: dict[str, Any] | None) -> Proc | None:
            return Proc(int(d["pid"]), float(d["started"])) if d else None

        return cls(
            Ports(**data["ports"]),
            proc(data.get("hub")),
            proc(data.get("proxy")),
            data.get("config_sha", ""),
            data.get("started_at", ""),
        )


class LocalHub:
    """One local hub's directory and processes."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.state_file = directory / "state.json"
        self.config_file = directory / "jupyterhub_config.py"

    @property
    def homes(self) -> Path:
        """The users' homes: in the hub's directory, or (as root) outside the data dir."""
        if localusers.running_as_root():
            return localusers.hub_homes(self.directory)
        return self.directory / "homes"

    # --- reading ------------------------------------------------------------------------

    def state(self) -> HubState | None:
        if not self.state_file.is_file():
            return None
        return HubState.from_json(self.state_file.read_text())

    def is_running(self) -> bool:
        state = self.state()
        return bool(
            state and state.hub and state.proxy and state.hub.alive() and state.proxy.alive()
        )

    def pids(self) -> list[int]:
        """PIDs of this hub's live processes (hub, proxy, and anything the hub spawned)."""
        state = self.state()
        if not state:
            return []
        pids = []
        for proc in (state.hub, state.proxy):
            if proc and proc.alive():
                pids.append(proc.pid)
                pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        return pids

    # --- planning -----------------------------------------------------------------------

    def choose_ports(self) -> Ports:
        """Keep the ports of an earlier deploy (stable URLs) when they are still usable."""
        state = self.state()
        if state and (self.is_running() or all(_free(p) for p in state.ports.as_dict().values())):
            return state.ports
        return Ports(*_free_ports(3))

    def render(self, hub_config: dict[str, Any], ports: Ports) -> str:
        return render_config(
            hub=self.name,
            directory=self.directory,
            ports=ports,
            hub_config=hub_config,
            account=(
                localusers.account_for(self.directory) if localusers.running_as_root() else None
            ),
        )

    def plan(self, config_text: str) -> str:
        """What a deploy would do: 'start', 'restart' or 'unchanged'."""
        state = self.state()
        if not self.is_running() or state is None:
            return "start"
        return "unchanged" if state.config_sha == _sha(config_text) else "restart"

    # --- changing -----------------------------------------------------------------------

    def start(
        self, config_text: str, ports: Ports, secret_env: Mapping[str, SecretStr] | None = None
    ) -> HubState:
        """(Re)start proxy and hub with `config_text`; waits until /hub/health answers.
        `secret_env`: secrets the hub reads from its environment (its OAuth client secret),
        put only into the hub process's environment."""
        self.stop()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if localusers.running_as_root():
            localusers.ensure(self.directory)  # the account, its venv, this hub's homes
        else:
            self.homes.mkdir(exist_ok=True)
        self.config_file.write_text(config_text)
        env = _process_env(proxy_token=secrets.token_hex(32))

        try:
            proxy = self._spawn(
                [
                    find_chp(),
                    "--ip=127.0.0.1",
                    f"--port={ports.public}",
                    "--api-ip=127.0.0.1",
                    f"--api-port={ports.proxy_api}",
                    f"--default-target=http://127.0.0.1:{ports.hub}",
                    f"--error-target=http://127.0.0.1:{ports.hub}/hub/error",
                ],
                env,
                "proxy.log",
            )
            state = HubState(ports, None, proxy, _sha(config_text), _now())
            self._save(state)
            _wait_for_port(ports.proxy_api, proxy, self.directory / "proxy.log")

            hub_env = env | {k: v.get_secret_value() for k, v in (secret_env or {}).items()}
            hub = self._spawn(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.config_file)],
                hub_env,
                "hub.log",
            )
            state = HubState(ports, hub, proxy, _sha(config_text), _now())
            self._save(state)
            self._wait_healthy(state)
            return state
        except BaseException:
            self.stop()  # never leave half a hub running
            raise

    def stop(self) -> list[int]:
        """Stop hub, proxy and the hub's user servers; returns the PIDs that were stopped."""
        state = self.state()
        if not state:
            return []
        pids = self.pids()
        victims = [psutil.Process(p) for p in pids]
        # The hub first: it stops its user servers and removes its routes on SIGTERM.
        for proc in (state.hub, state.proxy):
            if proc and proc.alive():
                _terminate(proc.pid)
        for victim in victims:
            if victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE:
                _terminate(victim.pid)
        self._save(HubState(state.ports, None, None, state.config_sha, state.started_at))
        return pids

    def remove(self, archive_to: Path | None) -> Path | None:
        """Stop, then delete the hub's directory (and its homes, when they live outside
        it), or move it under `archive_to` (the homes into its `homes`)."""
        self.stop()
        homes = self.homes
        outside = homes != self.directory / "homes" and homes.is_dir()
        if not self.directory.exists():
            return None
        if archive_to is None:
            shutil.rmtree(self.directory)
            if outside:
                shutil.rmtree(homes)
            return None
        archive_to.mkdir(parents=True, exist_ok=True)
        target = archive_to / f"{self.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        shutil.move(str(self.directory), target)
        if outside:
            dest = target / "homes"
            try:
                dest.rmdir()  # an empty one left by a run as another user
            except FileNotFoundError:
                pass
            except OSError:  # not empty: keep both
                dest = target / "account-homes"
            shutil.move(str(homes), dest)
        return target

    # --- helpers ------------------------------------------------------------------------

    def _spawn(self, argv: list[str], env: dict[str, str], log: str) -> Proc:
        with open(self.directory / log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _children[popen.pid] = popen
        return Proc.of(popen.pid)

    def _save(self, state: HubState) -> None:
        # Atomically: a reader (a health probe, `hubfleet demo`, a test) never sees it
        # half-written.
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.state_file)

    def _wait_healthy(self, state: HubState) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert state.hub is not None
            if not state.hub.alive():
                raise LocalHubError(
                    f"hub {self.name!r} exited during start; last log lines:\n"
                    + _tail(self.directory / "hub.log")
                )
            try:
                if requests.get(f"{state.url}/hub/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise LocalHubError(
            f"hub {self.name!r} did not answer /hub/health within {START_TIMEOUT:g}s; "
            f"see {self.directory / 'hub.log'}:\n" + _tail(self.directory / "hub.log")
        )


def _process_env(proxy_token: str) -> dict[str, str]:
    """A minimal environment: nothing of ours leaks into the hub but what it needs."""
    venv_bin = str(Path(sys.executable).parent)
    keep = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["CONFIGPROXY_AUTH_TOKEN"] = proxy_token
    return env


def _terminate(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; reaps our own children.

    A process another (living) process started stays a zombie until that parent reaps it;
    a zombie has stopped, so it counts as gone here.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(pid, STOP_TIMEOUT):
            break
    popen = _children.pop(pid, None)
    if popen is not None:
        popen.wait(STOP_TIMEOUT)


def _wait_gone(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popen = _children.get(pid)
        if popen is not None and popen.poll() is not None:
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


#: The kernel's range for ephemeral ports (outgoing connections, `bind(port 0)`).
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Kubernetes' default NodePort range starts here; local hubs keep below it too.
NODE_PORTS_FROM = 30000


def _port_pool() -> range:
    """10,000 ports below both the ephemeral range and Kubernetes' NodePorts."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    top = min(low, NODE_PORTS_FROM)
    return range(max(1024, top - 10000), top)


def _free_ports(n: int, pool: range | None = None) -> list[int]:
    """`n` distinct loopback ports free now, chosen below the kernel's ephemeral range.

    A port from `bind(0)` is an ephemeral one: between choosing it and the hub binding it,
    any outgoing connection on the machine may be given it (a busy machine's test run lost
    a hub start that way: "Address already in use"). Ports below the range are only ever
    taken by a process that binds them by number."""
    pool = pool or _port_pool()
    chosen: list[int] = []
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(pool)
        if port not in chosen and _free(port):
            chosen.append(port)
            if len(chosen) == n:
                return chosen
    raise LocalHubError(
        f"no {n} free loopback ports found in {pool.start}-{pool.stop - 1} (200 tries); "
        "stop what listens there or widen the kernel's ephemeral range's gap"
    )


def _wait_for_port(port: int, proc: Proc, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LocalHubError("configurable-http-proxy exited during start:\n" + _tail(log))
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LocalHubError(f"configurable-http-proxy did not listen on {port} within {timeout:g}s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- Prefect tasks ----------------------------------------------------------------------


def local_hub(fleet: Fleet, cluster: str, hub: str) -> LocalHub:
    """The local hub of `cluster/hub` (its directory under the cluster's data dir)."""
    settings = fleet.cluster(cluster).local
    root = local_hubs_dir(settings.data_dir if settings else None)
    return LocalHub(root / cluster / hub, f"{cluster}-{hub}")


@dataclass(frozen=True)
class LocalPlan:
    action: str  # start | restart | unchanged
    config: str
    ports: Ports


@task(task_run_name="plan-local-hub-{local.name}", cache_policy=NO_CACHE)
def plan_local_hub(local: LocalHub, hub_config: dict[str, Any]) -> LocalPlan:
    """Render the hub's config and compare with what runs. Changes nothing."""
    ports = local.choose_ports()
    config = local.render(hub_config, ports)
    return LocalPlan(local.plan(config), config, ports)


@task(task_run_name="start-local-hub-{local.name}", cache_policy=NO_CACHE)
def start_local_hub(
    local: LocalHub, plan: LocalPlan, secret_env: Mapping[str, SecretStr] | None = None
) -> HubState:
    """Write the hub's config and (re)start its proxy and hub processes (`secret_env`: see
    LocalHub.start)."""
    state = local.start(plan.config, plan.ports, secret_env)
    get_run_logger().info(
        "%s: hub pid %s, proxy pid %s, %s",
        local.name,
        state.hub.pid if state.hub else "-",
        state.proxy.pid if state.proxy else "-",
        state.url,
    )
    return state


@task(task_run_name="remove-local-hub-{local.name}", cache_policy=NO_CACHE)
def remove_local_hub(local: LocalHub, archive_to: Path | None) -> Path | None:
    """Stop the hub's processes, then delete its directory or move it to `archive_to`."""
    return local.remove(archive_to)


PREVIOUS_CONFIG = "jupyterhub_config.previous.py"


@task(task_run_name="keep-previous-config-{local.name}", cache_policy=NO_CACHE)
def keep_previous_config(local: LocalHub) -> LocalPlan | None:
    """Copy the running config to `jupyterhub_config.previous.py` (the rollback target);
    None on a first deploy. Changes only that copy."""
    state = local.state()
    if state is None or not local.config_file.is_file():
        return None
    text = local.config_file.read_text()
    (local.directory / PREVIOUS_CONFIG).write_text(text)
    return LocalPlan("rollback", text, state.ports)


@task(task_run_name="rollback-local-hub-{local.name}", cache_policy=NO_CACHE)
def rollback_local_hub(
    local: LocalHub, previous: LocalPlan, secret_env: Mapping[str, SecretStr] | None = None
) -> HubState:
    """Restart the hub's processes with the previous config: changes the running hub."""
    state = local.start(previous.config, previous.ports, secret_env)
    get_run_logger().warning("%s: rolled back to the previous config", local.name)
    return state
