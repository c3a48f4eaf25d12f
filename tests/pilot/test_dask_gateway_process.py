"""helm/hub's Dask Gateway configuration, run for real: the chart is rendered with the real
helm (`daskGateway.enabled=true`, chart defaults otherwise), its `dask_gateway_config.py`
runs in a real `dask-gateway-server` (the chart's UnsafeLocalBackend: real dask schedulers
and workers as processes), and users authenticate against a real JupyterHub with the
`dask-gateway` service registered by the chart's own hub config code.

What differs from Kubernetes, and nothing else:
- the hub: hubfleet's local hub config (`render_config`: null authenticator, sqlite, the
  hub starts configurable-http-proxy itself), plus the chart's `dask-gateway` service and
  role taken from executing the rendered `jupyterhub_config.py` against the rendered
  `values.json`; plus a test-only admin service whose token creates the user and its token.
- values.json's `daskGateway.url` -> the local gateway (`http://127.0.0.1:<port>`), and
  the user servers' DASK_GATEWAY__PROXY_ADDRESS -> `gateway://127.0.0.1:<port>`
  (the chart derives both from the Service name, which does not resolve here).
- overrides appended to the rendered `dask_gateway_config.py` (its text is not edited):
  `c.JupyterHubAuthenticator.jupyterhub_api_url` -> the local hub's own API
  (`http://127.0.0.1:<hub port>/hub/api`, as the chart uses the hub Service's port 8081),
  `c.Proxy.address` / `c.Proxy.tcp_address` -> free ports on 127.0.0.1.
- the token the hub Secret holds (`daskGateway.apiToken`) is a random one made here, given
  to both processes through their environment, as the Deployments do.
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
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import requests
import yaml
from traitlets.config import Config

from hubfleet.localhub import Ports, render_config
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
    """The chart rendered with the gateway on (chart defaults otherwise): kind/name -> doc."""
    values = tmp_path / "gateway.values.yaml"
    values.write_text("daskGateway: {enabled: true, image: {name: hubfleet-dask-gateway}}\n")
    h = Helm(kubeconfig=None, binary=helm)
    try:
        text = h.template(RELEASE, REPO / "helm" / "hub", "ns", [values])
    finally:
        h.close()
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def chart_values() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "helm" / "hub" / "values.yaml").read_text())["daskGateway"])


def hub_wiring(hub_cm: dict[str, str], gateway_url: str, token: str) -> Config:
    """Execute the rendered jupyterhub_config.py (the chart's own code) with its rendered
    values.json, the gateway URL pointed here and the Secret's token in the environment;
    returns the traitlets config it builds."""
    values = json.loads(hub_cm["values.json"])
    values["daskGateway"]["url"] = gateway_url
    cfg = Config()
    real_open = open

    def chart_open(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == "/usr/local/etc/jupyterhub/values.json":
            import io

            return io.StringIO(json.dumps(values))
        return real_open(path, *args, **kwargs)

    saved = os.environ.get("DASK_GATEWAY_API_TOKEN")
    os.environ["DASK_GATEWAY_API_TOKEN"] = token
    try:
        exec(  # the chart's code, as the hub pod runs it
            compile(hub_cm["jupyterhub_config.py"], "rendered jupyterhub_config.py", "exec"),
            {"get_config": lambda: cfg, "open": chart_open},
        )
    finally:
        if saved is None:
            del os.environ["DASK_GATEWAY_API_TOKEN"]
        else:
            os.environ["DASK_GATEWAY_API_TOKEN"] = saved
    return cfg


# --- the test ----------------------------------------------------------------------------


def test_chart_gateway_config_runs_dask_clusters_for_hub_users(rendered, tmp_path: Path) -> None:
    gw_values = chart_values()["cluster"]
    gw_deploy = rendered[f"Deployment/{RELEASE}-dask-gateway"]
    hub_deploy = rendered[f"Deployment/{RELEASE}-hub"]
    gw_container = gw_deploy["spec"]["template"]["spec"]["containers"][0]
    hub_container = hub_deploy["spec"]["template"]["spec"]["containers"][0]
    gw_config_text = rendered[f"ConfigMap/{RELEASE}-dask-gateway"]["data"]["dask_gateway_config.py"]
    # Both Deployments read the same Secret key: the gateway as JUPYTERHUB_API_TOKEN (what
    # JupyterHubAuthenticator reads), the hub as DASK_GATEWAY_API_TOKEN (the service's).
    env_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for c in (gw_container, hub_container)
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert env_refs["JUPYTERHUB_API_TOKEN"] == env_refs["DASK_GATEWAY_API_TOKEN"]
    assert env_refs["JUPYTERHUB_API_TOKEN"]["key"] == "daskGateway.apiToken"
    assert gw_container["args"][:2] == ["dask-gateway-server", "--config"]
    health_path = gw_container["readinessProbe"]["httpGet"]["path"]

    hub_port, proxy_api, public, gw_http, gw_sched = free_ports(5)
    ports = Ports(public=public, proxy_api=proxy_api, hub=hub_port)
    service_token, admin_token = secrets.token_hex(32), secrets.token_hex(32)

    # The chart's service registration and role, and what user servers are told.
    wiring = hub_wiring(
        rendered[f"ConfigMap/{RELEASE}-hub"]["data"], f"http://127.0.0.1:{gw_http}", service_token
    )
    [service] = [s for s in wiring.JupyterHub.services if s["name"] == "dask-gateway"]
    [role] = [r for r in wiring.JupyterHub.load_roles if r["name"] == "dask-gateway"]
    assert service["api_token"] == service_token
    user_env = dict(wiring.KubeSpawner.environment)
    assert user_env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    address = user_env["DASK_GATEWAY__ADDRESS"]
    proxy_address = f"gateway://127.0.0.1:{gw_sched}"  # override: the chart's names a Service
    assert user_env["DASK_GATEWAY__PROXY_ADDRESS"] == f"gateway://{RELEASE}-dask-gateway:8786"

    # The hub: hubfleet's local hub config + the chart's service (its token by environment,
    # as in the chart) + a test-only admin service.
    public_service = {k: v for k, v in service.items() if k != "api_token"}
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "homes").mkdir()
    hub_config = render_config(
        hub="dask", directory=hub_dir, ports=ports, hub_config={}, as_root=os.geteuid() == 0
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
