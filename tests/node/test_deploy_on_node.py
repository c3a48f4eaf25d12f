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
(testenv.nodevalues, each with its reason).
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
from hubhttp import call, server_ready, stop_server
from kubernetes import client
from nodefleet import NodeFleet
from prefect.blocks.system import Secret

from flows.check_hub_health import check_hub_health
from flows.deploy_hub import HubDeployFailed, deploy_hub
from tasks.hub_credentials import load_ops_token
from tasks.kube_portforward import PortForward
from testenv import history

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]


async def test_deploy_gate_user_break_rollback_on_the_real_node(
    node_fleet: NodeFleet, kube_api
) -> None:
    root, cluster, hub = node_fleet.root, node_fleet.cluster, node_fleet.hub
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
    assert first.action == "install" and first.health == "healthy"
    # The ops token was minted in the hub pod and stored; its block names the domain.
    block = await load_ops_token(cluster, hub)
    assert block is not None and block.url == f"https://{hub}.{cluster}.hubfleet.test"
    # Every level, spawn included: KubeSpawner started a pod on the node, ran Python in it.
    deep = await check_hub_health(cluster, hub, depth="deep")
    levels = {p.level: p for p in deep.probes}
    assert deep.verdict == "healthy", deep
    spawn = levels["spawn"]
    assert spawn.ok and "ran code in a kernel" in str(spawn.detail or spawn.reason), spawn
    print("spawn probe:", spawn.detail or spawn.reason, spawn.latency_ms, "ms")

    with PortForward(kube_api, hub, "component=proxy", 8000) as forward:
        api = f"{forward.url}/hub/api"
        assert call(f"{api}/users/alice", admin, "POST")[0] == 201
        server_ready(api, admin, "alice")
        pod = client.CoreV1Api(kube_api).read_namespaced_pod("jupyter-alice", hub)
        assert pod.spec.node_name and pod.status.phase == "Running"
        assert call(f"{forward.url}/user/alice/api/status", admin)[0] == 200
        stop_server(api, admin, "alice")

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
    assert again.verdict == "healthy", again
    with PortForward(kube_api, hub, "component=proxy", 8000) as forward:
        api = f"{forward.url}/hub/api"
        server_ready(api, admin, "alice")  # the user still gets a server
        stop_server(api, admin, "alice")

    # The admin token never reached a log or an artifact of any run.
    logs, artifacts = await history.logs(2000), await history.artifacts(limit=500)
    assert all(admin not in m.message for m in logs)
    assert all(admin not in json.dumps(a.data) for a in artifacts)
