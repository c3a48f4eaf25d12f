"""No user code as root: run as root, a local hub's user servers run as `hubfleet-user`.

Real components only: a real Prefect server, a hub deployed by deploy_hub (real JupyterHub
and configurable-http-proxy), a real single-user server and kernel started through the
hub's REST API; the uids are read from /proc.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import deploy_hub
from hubfleet.health import HEALTH_USER
from hubfleet.loader import load_fleet
from hubfleet.localusers import ACCOUNT
from tasks import jupyterhub_api as api
from tasks import probes
from tasks.local_hub import local_hub

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(os.geteuid() != 0, reason="not root: servers run as the invoking user"),
]


def ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/<pid>/status."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        key: [int(v) for v in rest.split()]
        for key, _, rest in (line.partition(":") for line in lines)
        if key in ("Uid", "Gid", "Groups")
    }


def listener_of(hub_pid: int, user: str) -> int:
    """The PID of the hub's descendant listening on a port where `user`'s server answers."""
    for child in psutil.Process(hub_pid).children(recursive=True):
        for conn in child.net_connections(kind="tcp"):
            if conn.status != psutil.CONN_LISTEN:
                continue
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{conn.laddr.port}/user/{user}/api", timeout=5
                )
            except requests.RequestException:
                continue
            if answer.ok and "version" in answer.json():
                return child.pid
    raise AssertionError(f"no process of the hub serves /user/{user}/")


async def test_user_server_and_kernel_run_as_the_unprivileged_account(data_dir: Path) -> None:
    account = pwd.getpwnam(ACCOUNT)
    assert account.pw_uid != 0 and account.pw_gid != 0

    deployed = await deploy_hub(cluster="local", hub="staging")
    local = local_hub(load_fleet("fleet"), "local", "staging")
    config = local.config_file.read_text()
    assert "--allow-root" not in config and "AccountSpawner" in config
    url = deployed.url
    token = (await HubOpsToken.aload("local-staging")).token.get_secret_value()
    users = f"{url}/hub/api/users/{HEALTH_USER}"
    api.call("POST", f"{users}/server", token=token, timeout=30)
    probes._wait_ready(users, token, time.monotonic() + 90)

    state = local.state()
    assert state and state.hub
    assert ids(state.hub.pid)["Uid"] == [0, 0, 0, 0]  # the hub itself stays root
    server = listener_of(state.hub.pid, HEALTH_USER)
    # Real, effective, saved and filesystem uid: all the account's, never root's; no group
    # of root's kept either.
    assert ids(server) == {
        "Uid": [account.pw_uid] * 4,
        "Gid": [account.pw_gid] * 4,
        "Groups": [account.pw_gid],
    }

    # It gets no secret of the hub's (the proxy's token), and none on its command line.
    environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
    assert not any(var.startswith(b"CONFIGPROXY_AUTH_TOKEN=") for var in environ)
    assert b"HOME=" + str(local.homes / HEALTH_USER).encode() in environ
    assert token not in " ".join(psutil.Process(server).cmdline())

    # A kernel the server starts (where user code runs) is the account's too.
    base = f"{url}/user/{HEALTH_USER}"
    kernel = api.call("POST", f"{base}/api/kernels", token=token, json={}).json()
    try:
        deadline = time.monotonic() + 30
        kernels: list[psutil.Process] = []
        while not kernels and time.monotonic() < deadline:
            kernels = [
                p
                for p in psutil.Process(server).children()
                if any("ipykernel" in arg for arg in p.cmdline())
            ]
            time.sleep(0.2)
        assert kernels, "the server started no kernel process"
        assert all(ids(k.pid)["Uid"] == [account.pw_uid] * 4 for k in kernels)
    finally:
        api.call("DELETE", f"{base}/api/kernels/{kernel['id']}", token=token)

    # The server works in its own home: the account's, 0700, below root-owned 0711 dirs.
    home = local.homes / HEALTH_USER
    assert Path(f"/proc/{server}/cwd").resolve() == home.resolve()
    info = home.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (account.pw_uid, 0o700)
    for parent in (local.homes, local.homes.parent):
        info = parent.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o711)

    # The account cannot read the hub's directory (cookie secret, database) nor the data
    # dir, which stay root's and 0700.
    python = Path(psutil.Process(server).exe())
    assert not python.is_relative_to("/root")
    for private in (local.directory, data_dir):
        tried = subprocess.run(
            [str(python), "-c", f"import os; os.listdir({str(private)!r})"],
            user=ACCOUNT, group=account.pw_gid, extra_groups=[], capture_output=True, text=True,
            cwd="/", check=False,
        )  # fmt: skip
        assert tried.returncode != 0 and "PermissionError" in tried.stderr, tried

    # The spawn health level (the probe's own server and kernel) still passes.
    outcome = probes.spawn_and_run(url, token)
    assert "ran code in a kernel" in outcome.detail
