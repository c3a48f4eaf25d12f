"""hubfleet's teardown_hub of a z2jh hub running on the real node.

The hub is deployed by `deploy_hub` (its gate, its ops token minted in the hub pod), with
a home volume per user provisioned by the node's local-path provisioner. A user's server
writes a file in their home; the teardown (keeping data) revokes the ops token through the
hub's API (port-forward) and sees it refused, uninstalls the release, deletes the
namespace and waits for it, deletes the token block, and leaves the home volume Retained,
labelled as the hub's, with the user's file still on the node's disk (the volume's host
path on this machine). Nothing is a stand-in.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from prefect.blocks.system import Secret

from blocks.cluster_access import ClusterAccess
from flows.deploy_hub import deploy_hub
from flows.teardown_hub import teardown_hub
from tasks import jupyterhub_api
from tasks.helm import Helm
from tasks.hub_credentials import load_ops_token
from tasks.kube_archive import ARCHIVED_CLUSTER, ARCHIVED_HUB, ARCHIVED_USER
from tasks.kube_portforward import PortForward
from testenv import hubimages
from testenv.node import STORAGE_CLASS
from testenv.nodevalues import node_values

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, token: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    req.add_header("Authorization", f"token {token}")
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _server_ready(api: str, token: str, user: str, timeout: float = 300) -> None:
    """Start `user`'s server and wait until the hub says it is ready."""
    status, body = _call(f"{api}/users/{user}/server", token, "POST")
    assert status in (201, 202), body[-500:]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _call(f"{api}/users/{user}", token)
        server = json.loads(body).get("servers", {}).get("", {}) if status == 200 else {}
        if server.get("ready"):
            return
        time.sleep(3)
    raise AssertionError(f"{user}'s server not ready within {timeout}s: {body[-500:]!r}")


@pytest.fixture
def home_hub(tmp_path: Path, monkeypatch, kube, kube_api, real_node, helm):
    """A fleet with one hub on the real node whose users get a home volume each;
    (cluster, hub). Whatever the test leaves (release, namespace, volumes) goes after."""
    images = {name: hubimages.build_image(name) for name in ("k8s-hub", "proxy", "singleuser")}
    for archive in images.values():
        real_node.import_image(archive, timeout=600)
    tag = uuid.uuid4().hex[:5]
    cluster, hub = f"node{tag}", f"td{tag}"
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
    # This hub's users get a home volume each (the node's cluster values turn them off).
    storage = {"type": "dynamic", "capacity": "64Mi", "dynamic": {"storageClass": STORAGE_CLASS}}
    (d / f"{hub}.values.yaml").write_text(
        yaml.safe_dump({"jupyterhub": {"singleuser": {"storage": storage}}})
    )
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    ).save(cluster, overwrite=True)
    yield cluster, hub
    core = client.CoreV1Api(kube_api)
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        h.uninstall(hub, hub, wait_timeout="2m")
    except Exception:  # cleanup only: the test's own failure is what matters
        pass
    finally:
        h.close()
    try:
        for pod in core.list_namespaced_pod(hub).items:
            core.delete_namespaced_pod(pod.metadata.name, hub, grace_period_seconds=1)
        core.delete_namespace(hub)
    except ApiException as exc:
        if exc.status != 404:
            raise
    # The archived volumes: Delete lets the provisioner remove their directories.
    for pv in core.list_persistent_volume(label_selector=f"{ARCHIVED_HUB}={hub}").items:
        core.patch_persistent_volume(
            pv.metadata.name, {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}
        )


def _exec(kube_api: Any, ns: str, pod: str, command: list[str]) -> str:
    return stream(
        client.CoreV1Api(kube_api).connect_get_namespaced_pod_exec,
        pod,
        ns,
        container="notebook",
        command=command,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )


def _host_path(pv: Any) -> Path:
    """Where a local-path volume's data is on this machine (the node's disk)."""
    source = pv.spec.host_path or pv.spec.local
    return Path(source.path)


async def test_teardown_keeps_the_home_on_the_node_and_revokes_the_ops_token(
    home_hub, kube, kube_api, helm
) -> None:
    cluster, hub = home_hub
    admin = secrets.token_hex(32)
    service = {"test-admin": {"apiToken": admin, "admin": True}}
    await Secret(value={"jupyterhub": {"hub": {"services": service}}}).save(
        f"hub-values-{cluster}-{hub}", overwrite=True
    )
    deployed = await deploy_hub(cluster=cluster, hub=hub, gate="auto", wait_timeout="5m")
    assert deployed.health == "healthy", deployed
    block = await load_ops_token(cluster, hub)
    assert block is not None
    ops_token = block.token.get_secret_value()

    core = client.CoreV1Api(kube_api)
    with PortForward(kube_api, hub, "component=proxy", 8000).start() as forward:
        api = f"{forward.url}/hub/api"
        assert _call(f"{api}/users/alice", admin, "POST")[0] == 201
        _server_ready(api, admin, "alice")
        # alice writes a file in her home (the volume mounted at /home/jovyan).
        _exec(kube_api, hub, "jupyter-alice", ["sh", "-c", "echo 'kept' > ~/results.txt"])
        assert _exec(kube_api, hub, "jupyter-alice", ["cat", "/home/jovyan/results.txt"]) == (
            "kept\n"
        )
        # The ops token works before the teardown.
        assert jupyterhub_api.whoami(forward.url, ops_token)["name"] == "hubfleet-ops"
    claim = core.read_namespaced_persistent_volume_claim("claim-alice", hub)
    pv_name = claim.spec.volume_name
    assert pv_name

    dry = await teardown_hub(cluster, hub, dry_run=True, operator="ivy")
    assert f"archive 1 home volume(s) (claim-alice ({pv_name}))" in dry.would, dry
    assert core.read_namespace(hub).status.phase == "Active"

    started = time.monotonic()
    done = await teardown_hub(cluster, hub, operator="ivy")
    took = time.monotonic() - started
    print(f"teardown of a running hub on the real node (1 home, kept): {took:.1f}s")
    assert done.archived_volumes == [pv_name], done
    assert done.revoked == f"ops token {block.token_id} revoked; it is refused", done
    # The hub is gone: namespace (waited for), release, ops token block.
    with pytest.raises(ApiException) as gone:
        core.read_namespace(hub)
    assert gone.value.status == 404
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        assert h.status(hub, hub) is None
    finally:
        h.close()
    assert await load_ops_token(cluster, hub) is None
    # alice's home: its volume Retained (Released: its claim went with the namespace),
    # labelled as this hub's, and her file still on the node's disk.
    deadline = time.monotonic() + 60
    pv = core.read_persistent_volume(pv_name)
    while pv.status.phase != "Released" and time.monotonic() < deadline:
        time.sleep(1)
        pv = core.read_persistent_volume(pv_name)
    assert pv.status.phase == "Released" and pv.spec.persistent_volume_reclaim_policy == "Retain"
    assert pv.metadata.labels[ARCHIVED_HUB] == hub
    assert pv.metadata.labels[ARCHIVED_CLUSTER] == cluster
    assert pv.metadata.labels[ARCHIVED_USER] == "alice"
    time.sleep(5)  # the provisioner would have deleted a Delete volume by now
    assert (_host_path(pv) / "results.txt").read_text() == "kept\n"
