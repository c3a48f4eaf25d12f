"""helm/hub's Dask Gateway, run for real: the wrapper chart (with z2jh 4.4.0) is rendered
with the real helm, the gateway on and the wiring values hubfleet layers in for it; its
`dask_gateway_config.py` runs in a real `dask-gateway-server` (UnsafeLocalBackend: real
dask schedulers and workers as processes), and users authenticate against a real
JupyterHub with the `dask-gateway` service and role as z2jh builds them from those values.

What differs from Kubernetes, and nothing else:
- the hub: hubfleet's local hub config (`render_config`: null authenticator, sqlite, the
  hub starts configurable-http-proxy itself), plus the `dask-gateway` service and role
  read from the rendered values z2jh hands the hub (its `hub` Secret's values.yaml); plus
  a test-only admin service whose token creates the user and its token.
- the service's URL and the user servers' DASK_GATEWAY__ADDRESS / __PROXY_ADDRESS ->
  the local gateway on 127.0.0.1 (the chart's name the gateway's Service, which does not
  resolve here).
- overrides appended to the rendered `dask_gateway_config.py` (its text is not edited):
  `c.JupyterHubAuthenticator.jupyterhub_api_url` -> the local hub's own API
  (`http://127.0.0.1:<hub port>/hub/api`, as the chart uses the hub Service's port 8081),
  `c.Proxy.address` / `c.Proxy.tcp_address` -> free ports on 127.0.0.1.
- the token z2jh's Secret holds (`hub.services.dask-gateway.apiToken`) is a random one made
  here, given to both processes through their environment, as the pods get it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import requests
import yaml

from hubfleet.charts import hub_chart
from hubfleet.layers import merge_values
from hubfleet.localhub import Ports, render_config
from hubfleet.values import dask_gateway_values
from tasks.helm import Helm
from tasks.local_hub import find_chp

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RELEASE = "x"
START_TIMEOUT = 90.0  # a loaded 2-core machine: generous, but polled


# --- helpers -----------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_tree(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and everything under it (by PID), SIGKILL what is left."""
    try:
        procs = [psutil.Process(popen.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    popen.wait(5)


def wait_http(url: str, popen: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            pytest.fail(f"{popen.args!r} exited ({popen.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer 200 within {START_TIMEOUT:g}s:\n{log.read_text()[-3000:]}")


def minimal_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR") if k in os.environ}
    env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**env, **extra}


# --- the rendered chart ------------------------------------------------------------------


@pytest.fixture
def rendered(helm, tmp_path: Path) -> dict[str, Any]:
    """The hub chart rendered with the gateway on, plus the wiring values hubfleet layers in
    when it is (`dask_gateway_values`), chart defaults otherwise: kind/name -> doc."""
    values = tmp_path / "gateway.values.json"  # JSON is YAML
    gateway = {"daskGateway": {"enabled": True, "image": {"name": "hubfleet-dask-gateway"}}}
    values.write_text(json.dumps(merge_values(dask_gateway_values(), gateway)))
    h = Helm(kubeconfig=None, binary=helm)
    try:
        text = h.template(RELEASE, hub_chart("4.4.0"), "ns", [values])
    finally:
        h.close()
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def chart_values() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "helm" / "hub" / "values.yaml").read_text())["daskGateway"])


def hub_wiring(hub_secret: dict[str, Any], gateway_url: str) -> tuple[dict, dict, dict]:
    """What z2jh makes of the rendered values it hands the hub (its `hub` Secret's
    values.yaml): the `dask-gateway` service (its URL pointed here), its role, and the
    environment of user servers."""
    values = yaml.safe_load(base64.b64decode(hub_secret["data"]["values.yaml"]))
    service = {"name": "dask-gateway", **values["hub"]["services"]["dask-gateway"]}
    service["url"] = gateway_url
    role = {"name": "dask-gateway", **values["hub"]["loadRoles"]["dask-gateway"]}
    return service, role, dict(values["singleuser"]["extraEnv"])


# --- the test ----------------------------------------------------------------------------


def test_chart_gateway_config_runs_dask_clusters_for_hub_users(rendered, tmp_path: Path) -> None:
    gw_values = chart_values()["cluster"]
    gw_deploy = rendered["Deployment/dask-gateway"]
    gw_container = gw_deploy["spec"]["template"]["spec"]["containers"][0]
    gw_config_text = rendered["ConfigMap/dask-gateway"]["data"]["dask_gateway_config.py"]
    # The gateway reads, as JUPYTERHUB_API_TOKEN (what JupyterHubAuthenticator reads), the
    # token z2jh generates for the `dask-gateway` service into its `hub` Secret.
    env_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in gw_container.get("env", [])
        if "valueFrom" in e
    }
    assert env_refs["JUPYTERHUB_API_TOKEN"] == {
        "name": "hub",
        "key": "hub.services.dask-gateway.apiToken",
    }
    assert "hub.services.dask-gateway.apiToken" in rendered["Secret/hub"]["data"]
    assert gw_container["args"][:2] == ["dask-gateway-server", "--config"]
    health_path = gw_container["readinessProbe"]["httpGet"]["path"]

    hub_port, proxy_api, public, gw_http, gw_sched = free_ports(5)
    ports = Ports(public=public, proxy_api=proxy_api, hub=hub_port)
    service_token, admin_token = secrets.token_hex(32), secrets.token_hex(32)

    # The service registration and role z2jh builds, and what user servers are told.
    service, role, user_env = hub_wiring(rendered["Secret/hub"], f"http://127.0.0.1:{gw_http}")
    assert user_env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    # override: the chart's address names the gateway's Service, which does not resolve here
    address = user_env["DASK_GATEWAY__ADDRESS"].replace(
        "http://dask-gateway:8000", f"http://127.0.0.1:{gw_http}"
    )
    proxy_address = f"gateway://127.0.0.1:{gw_sched}"
    assert user_env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://dask-gateway:8786"

    # The hub: hubfleet's local hub config + z2jh's service (its token by environment, as
    # z2jh passes it from its Secret) + a test-only admin service.
    public_service = dict(service)
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "homes").mkdir()
    hub_config = render_config(
        hub="dask",
        directory=hub_dir,
        ports=ports,
        hub_config={},
        account=None,  # no servers
    )
    hub_config += "\n".join(
        [
            "import os",
            "c.ConfigurableHTTPProxy.should_start = True",
            f"c.ConfigurableHTTPProxy.command = [{find_chp()!r}]",
            f"_gateway = json.loads({json.dumps(public_service)!r})",
            "_gateway['api_token'] = os.environ['DASK_GATEWAY_API_TOKEN']",
            "c.JupyterHub.services = [_gateway, {'name': 'test-admin',"
            " 'api_token': os.environ['TEST_ADMIN_TOKEN']}]",
            f"c.JupyterHub.load_roles = [json.loads({json.dumps(role)!r}), {{'name': 'test-admin',"
            " 'services': ['test-admin'], 'scopes': ['admin:users', 'tokens']}]",
            "",
        ]
    )
    (hub_dir / "jupyterhub_config.py").write_text(hub_config)

    gw_dir = tmp_path / "gateway"
    gw_dir.mkdir()
    overrides = [
        "",
        "# --- test overrides (outside Kubernetes) ---",
        f"c.JupyterHubAuthenticator.jupyterhub_api_url = 'http://127.0.0.1:{hub_port}/hub/api'",
        f"c.Proxy.address = '127.0.0.1:{gw_http}'",
        f"c.Proxy.tcp_address = '127.0.0.1:{gw_sched}'",
        # Cluster working dirs (and their scheduler/worker logs) under tmp_path, not /tmp.
        f"c.LocalBackend.clusters_directory = {str(gw_dir / 'clusters')!r}",
        "",
    ]
    (gw_dir / "dask_gateway_config.py").write_text(gw_config_text + "\n".join(overrides))

    procs: list[subprocess.Popen[bytes]] = []
    gateway = bad_gateway = None
    try:
        hub_log = hub_dir / "hub.log"
        procs.append(
            spawn(
                [sys.executable, "-m", "jupyterhub", "-f", str(hub_dir / "jupyterhub_config.py")],
                minimal_env(
                    DASK_GATEWAY_API_TOKEN=service_token,
                    TEST_ADMIN_TOKEN=admin_token,
                    CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(32),
                ),
                hub_dir,
                hub_log,
            )
        )
        gw_log = gw_dir / "gateway.log"
        procs.append(
            spawn(
                [
                    str(VENV_BIN / gw_container["args"][0]),
                    *gw_container["args"][1:2],
                    str(gw_dir / "dask_gateway_config.py"),
                ],
                minimal_env(JUPYTERHUB_API_TOKEN=service_token),
                gw_dir,
                gw_log,
            )
        )
        wait_http(f"http://127.0.0.1:{public}/hub/health", procs[0], hub_log)
        # The chart's readiness probe path answers.
        wait_http(f"http://127.0.0.1:{gw_http}{health_path}", procs[1], gw_log)

        # A hub user and its token, through the hub's REST API.
        api = f"http://127.0.0.1:{public}/hub/api"
        admin = {"Authorization": f"token {admin_token}"}
        r = requests.post(f"{api}/users/alice", headers=admin, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.post(
            f"{api}/users/alice/tokens", headers=admin, json={"note": "dask"}, timeout=30
        )
        assert r.status_code == 201, r.text
        user_token = r.json()["token"]

        from dask_gateway import Gateway, JupyterHubAuth
        from dask_gateway.client import GatewayWarning

        # A bad token is refused (the hub does not know it: the gateway answers 401).
        bad_gateway = Gateway(address, proxy_address, auth=JupyterHubAuth(api_token="nope"))
        with pytest.raises(aiohttp.ClientResponseError) as refused:
            bad_gateway.list_clusters()
        assert refused.value.status == 401

        gateway = Gateway(address, proxy_address, auth=JupyterHubAuth(api_token=user_token))
        cluster = gateway.new_cluster()
        try:
            assert [c.name for c in gateway.list_clusters()] == [cluster.name]
            cluster.scale(1)
            try:
                client = cluster.get_client()
            except OSError:
                pytest.fail("no client connection; cluster logs:\n" + cluster_logs(gw_dir))
            try:
                client.wait_for_workers(1, timeout=START_TIMEOUT)
                assert client.submit(sum, [1, 2, 3]).result(timeout=START_TIMEOUT) == 6
                # The worker has the chart's per-worker cores and memory.
                [worker] = client.scheduler_info()["workers"].values()
                assert worker["nthreads"] == gw_values["workerCores"]
                assert worker["memory_limit"] == parse_memory(gw_values["workerMemory"])
            finally:
                client.close()

            # More workers than allowed: dask-gateway caps the request at the cluster's
            # limit (routes.scale_cluster) and the client warns with the gateway's message.
            # The limit is maxWorkers only if maxCores/maxMemory leave room for that many
            # workers next to the scheduler (1 core, 2G): the chart's defaults must.
            limit = min(
                gw_values["maxWorkers"],
                (gw_values["maxCores"] - 1) // gw_values["workerCores"],
                (parse_memory(gw_values["maxMemory"]) - 2 * 2**30)
                // parse_memory(gw_values["workerMemory"]),
            )
            assert limit == gw_values["maxWorkers"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cluster.scale(limit + 5)
            messages = [str(w.message) for w in caught if issubclass(w.category, GatewayWarning)]
            assert messages == [
                f"Scale request of {limit + 5} workers would exceed resource limit of {limit} "
                f"workers. Scaling to {limit} instead."
            ], messages
        finally:
            cluster.shutdown()
        assert gateway.list_clusters() == []

        # The hub knows the gateway's token as the chart's service, and its proxy routes the
        # service URL to the gateway (the chart's Proxy.prefix matches the service path).
        r = requests.get(
            f"{api}/user", headers={"Authorization": f"token {service_token}"}, timeout=30
        )
        assert (r.status_code, r.json()["kind"], r.json()["name"]) == (
            200,
            "service",
            "dask-gateway",
        ), r.text
        wait_http(f"http://127.0.0.1:{public}{health_path}", procs[1], gw_log)
    finally:
        for g in (gateway, bad_gateway):
            if g is not None:
                g.close()
        for popen in reversed(procs):
            stop_tree(popen)


def parse_memory(text: str) -> int:
    """dask-gateway's MemoryLimit: K/M/G/T are powers of 1024."""
    return int(float(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[text[-1]])


def cluster_logs(gw_dir: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted((gw_dir / "clusters").glob("*/logs/*.log"))
    )
