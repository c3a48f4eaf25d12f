"""hubfleet's own deploy_hub on the real node: a hub as a release of the upstream Zero to
JupyterHub chart (4.4.0, through hubfleet's wrapper and layering), its pods running for
real, reached by the health gate through the Kubernetes API (the cluster's `hub_access:
port-forward`), its ops token minted in the running hub pod.

The test deploys a hub; the gate passes (rollout, then reachable → api → auth → spawn: a
user pod started by KubeSpawner runs Python in a kernel); a user created through the hub's
API gets a server; a values change that makes JupyterHub exit never gets Ready and is
rolled back by helm; the hub is healthy again and the user still gets a server.

Nothing is a stand-in: helm, the control plane, the kubelet, containerd and the images
(built here) are real. The node's own limits are in its cluster values
(hubfleet.testenv.nodevalues, each with its reason).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from prefect.blocks.system import Secret

from blocks.cluster_access import ClusterAccess
from flows.check_hub_health import check_hub_health
from flows.deploy_hub import HubDeployFailed, deploy_hub
from hubfleet.testenv import history, hubimages
from hubfleet.testenv.nodevalues import node_values
from tasks.helm import Helm
from tasks.hub_credentials import load_ops_token
from tasks.kube_portforward import PortForward

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, token: str, method: str = "GET", timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    req.add_header("Authorization", f"token {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _server_ready(api: str, token: str, user: str, timeout: float = 300) -> None:
    """Start `user`'s server (if not running) and wait until the hub says it is ready."""
    status, body = _call(f"{api}/users/{user}/server", token, "POST")
    assert status in (201, 202, 400), body[-500:]  # 400: already running
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _call(f"{api}/users/{user}", token)
        server = json.loads(body).get("servers", {}).get("", {}) if status == 200 else {}
        if server.get("ready"):
            return
        time.sleep(3)
    raise AssertionError(f"{user}'s server not ready within {timeout}s: {body[-500:]!r}")


def _stop_server(api: str, token: str, user: str, timeout: float = 120) -> None:
    _call(f"{api}/users/{user}/server", token, "DELETE")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _call(f"{api}/users/{user}", token)
        if status == 200 and not json.loads(body).get("servers"):
            return
        time.sleep(2)
    raise AssertionError(f"{user}'s server did not stop within {timeout}s")


@pytest.fixture
def node_hub(tmp_path: Path, monkeypatch, kube, kube_api, real_node, helm):
    """A fleet with one hub on the real node; (root, cluster, hub). Uninstalled after."""
    images = {name: hubimages.build_image(name) for name in ("k8s-hub", "proxy", "singleuser")}
    for archive in images.values():
        real_node.import_image(archive, timeout=600)
    tag = uuid.uuid4().hex[:5]
    cluster, hub = f"node{tag}", f"hub{tag}"
    root = tmp_path / "fleet"
    d = root / "clusters" / cluster
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: node-fleet\nchart_version: 4.4.0\n")
    (d / "cluster.yaml").write_text(
        f"name: {cluster}\nprovider: kubeconfig\nkubeconfig: {{context: hubfleet-testenv}}\n"
        "hub_access: port-forward\nhubs:\n"
        f"  - {{name: {hub}, domain: {hub}.{cluster}.hubfleet.test, tier: staging, "
        f"kind: standing, values: [{hub}.values.yaml]}}\n"
    )
    refs = {name: archive.ref for name, archive in images.items()}
    (d / "cluster.values.yaml").write_text(yaml.safe_dump({"jupyterhub": node_values(refs)}))
    (d / f"{hub}.values.yaml").write_text("{}\n")
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(cluster, overwrite=True)
    yield root, cluster, hub
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        h.uninstall(hub, hub, wait_timeout="2m")
    except Exception:  # cleanup only: the test's own failure is what matters
        pass
    finally:
        h.close()
    core = client.CoreV1Api(kube_api)
    for pod in core.list_namespaced_pod(hub).items:  # KubeSpawner's, not the release's
        core.delete_namespaced_pod(pod.metadata.name, hub, grace_period_seconds=1)
    core.delete_namespace(hub)


async def test_deploy_gate_user_break_rollback_on_the_real_node(node_hub, kube_api) -> None:
    root, cluster, hub = node_hub
    # A test admin, as a secret values layer (hubfleet's real path for secrets): z2jh
    # registers it as a service with this token; it is never in a file of the fleet.
    admin = secrets.token_hex(32)
    service = {"test-admin": {"apiToken": admin, "admin": True}}
    await Secret(value={"jupyterhub": {"hub": {"services": service}}}).save(
        f"hub-values-{cluster}-{hub}", overwrite=True
    )

    started = time.monotonic()
    first = await deploy_hub(cluster=cluster, hub=hub, gate="auto", wait_timeout="5m")
    print(f"deploy to healthy on the real node: {time.monotonic() - started:.1f}s")
    assert first["action"] == "install" and first["health"] == "healthy"
    # The ops token was minted in the hub pod and stored; its block names the domain.
    block = await load_ops_token(cluster, hub)
    assert block is not None and block.url == f"https://{hub}.{cluster}.hubfleet.test"
    # Every level, spawn included: KubeSpawner started a pod on the node, ran Python in it.
    deep = await check_hub_health(cluster, hub, depth="deep")
    levels = {p["level"]: p for p in deep["probes"]}
    assert deep["verdict"] == "healthy", deep
    spawn = levels["spawn"]
    assert spawn["ok"] and "ran code in a kernel" in str(spawn["detail"] or spawn["reason"]), spawn
    print("spawn probe:", spawn["detail"] or spawn["reason"], spawn["latency_ms"], "ms")

    with PortForward(kube_api, hub, "component=proxy", 8000).start() as forward:
        api = f"{forward.url}/hub/api"
        assert _call(f"{api}/users/alice", admin, "POST")[0] == 201
        _server_ready(api, admin, "alice")
        pod = client.CoreV1Api(kube_api).read_namespaced_pod("jupyter-alice", hub)
        assert pod.spec.node_name and pod.status.phase == "Running"
        assert _call(f"{forward.url}/user/alice/api/status", admin)[0] == 200
        _stop_server(api, admin, "alice")

    # A config that makes JupyterHub exit: the new hub pod never gets Ready, helm's
    # --atomic rolls the release back, and the deploy fails saying so.
    values = root / "clusters" / cluster / f"{hub}.values.yaml"
    values.write_text(
        "jupyterhub:\n  hub:\n    config:\n      JupyterHub:\n"
        "        authenticator_class: no.such.Authenticator\n"
    )
    with pytest.raises(HubDeployFailed, match="--atomic undid it"):
        await deploy_hub(cluster=cluster, hub=hub, gate="auto", wait_timeout="90s")
    values.write_text("{}\n")
    again = await check_hub_health(cluster, hub, depth="auth")
    assert again["verdict"] == "healthy", again
    with PortForward(kube_api, hub, "component=proxy", 8000).start() as forward:
        api = f"{forward.url}/hub/api"
        _server_ready(api, admin, "alice")  # the user still gets a server
        _stop_server(api, admin, "alice")

    # The admin token never reached a log or an artifact of any run.
    logs, artifacts = await history.logs(2000), await history.artifacts(limit=500)
    assert all(admin not in m.message for m in logs)
    assert all(admin not in json.dumps(a.data) for a in artifacts)
