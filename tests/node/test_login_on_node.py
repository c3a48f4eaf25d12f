"""Logging in to a z2jh hub on the real node through the real OAuth flow, against Dex.

Real components only: Dex (built from the Go module proxy) listening on the node's
host-side address (the hub pod redeems codes there; the test's browser, requests, reaches
it at the same address), the hub deployed by `deploy_hub` (z2jh chart, k8s-hub image with
oauthenticator, GenericOAuthenticator), a user server spawned by KubeSpawner on the node.

An allowed user logs in and gets a server; a user outside the allowed set gets the hub's
403 page; an admin is admin. The client secret is stored in its block, reaches the hub
only through the Secret `hubfleet-oauth` (written through the API), and is in no helm
values, manifest, run log, artifact, parameter or file of the fleet.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client
from nodefleet import NodeFleet
from pydantic import SecretStr
from waiting import wait_for

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import deploy_hub
from tasks.helm import Helm
from tasks.oauth import store_oauth_client
from testenv import history
from testenv.dex import ADMIN, ALLOWED, OUTSIDER, USERS, Dex, build_dex, client_for, log_in
from testenv.emulators import _free_port

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]


def set_auth(fleet: NodeFleet, auth: dict[str, Any]) -> None:
    """Make the fleet's hub a prod hub with `auth:`, and let its pod reach Dex."""
    path = fleet.cluster_dir / "cluster.yaml"
    body = yaml.safe_load(path.read_text())
    body["hubs"][0].update({"tier": "prod", "auth": auth})
    path.write_text(yaml.safe_dump(body, sort_keys=False))


def user(proxy: str, token: str, name: str) -> dict[str, Any]:
    answer = requests.get(
        f"{proxy}/hub/api/users/{name}", headers={"Authorization": f"token {token}"}, timeout=10
    )
    return answer.json() if answer.status_code == 200 else {"status": answer.status_code}


async def test_oidc_login_on_node_hub(node_fleet: NodeFleet, real_node, kube, kube_api, helm):
    fleet, host = node_fleet, real_node.host_ip
    dex_port = _free_port(host)
    auth = {
        "provider": "oidc",
        "client_id": "hubfleet-node-login",
        "issuer": f"http://{host}:{dex_port}/dex",
        "username_claim": "name",
        "allowed_users": [ALLOWED.username],
        "admin_users": [ADMIN.username],
    }
    set_auth(fleet, auth)
    # The hub pod reaches Dex on the node's host address (a private address: z2jh's hub
    # egress rules leave private addresses out unless allowed).
    (fleet.cluster_dir / f"{fleet.hub}.values.yaml").write_text(
        yaml.safe_dump(
            {
                "jupyterhub": {
                    "hub": {
                        "networkPolicy": {"egress": [{"to": [{"ipBlock": {"cidr": f"{host}/32"}}]}]}
                    }
                }
            }
        )
    )
    dex_client = client_for("http://placeholder/", auth["client_id"])
    secret = dex_client.secret
    await store_oauth_client(fleet.cluster, fleet.hub, auth["client_id"], SecretStr(secret))
    binary = build_dex()

    started = time.monotonic()
    first = await deploy_hub(cluster=fleet.cluster, hub=fleet.hub, wait_timeout="5m")
    assert first.health == "healthy", first
    core = client.CoreV1Api(kube_api)

    def proxy_url() -> str:
        [pod] = core.list_namespaced_pod(fleet.hub, label_selector="component=proxy").items
        return f"http://{pod.status.pod_ip}:8000"

    # Users reach this hub at its proxy pod's address: the callback Dex sends them to. z2jh
    # restarts the proxy once, at the first upgrade after install (a known z2jh behaviour),
    # so the address is read again until a deploy leaves it as it was.
    proxy = proxy_url()
    for _ in range(3):
        set_auth(fleet, {**auth, "callback_url": f"{proxy}/hub/oauth_callback"})
        again = await deploy_hub(cluster=fleet.cluster, hub=fleet.hub, wait_timeout="5m")
        assert again.health == "healthy", again
        if proxy_url() == proxy:
            break
        proxy = proxy_url()
    else:
        raise AssertionError("the proxy's address kept changing")
    deploy_s = time.monotonic() - started

    # The hub reads the secret from the Secret hubfleet wrote through the API.
    stored = core.read_namespaced_secret("hubfleet-oauth", fleet.hub)
    assert base64.b64decode(stored.data["client-secret"]).decode() == secret
    [hub_pod] = core.list_namespaced_pod(fleet.hub, label_selector="component=hub").items
    env = {e.name: e for e in hub_pod.spec.containers[0].env}
    ref = env["OAUTH_CLIENT_SECRET"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("hubfleet-oauth", "client-secret")

    dex_client = type(dex_client)(auth["client_id"], secret, (f"{proxy}/hub/oauth_callback",))
    token = (await HubOpsToken.aload(f"{fleet.cluster}-{fleet.hub}")).token.get_secret_value()
    with Dex([dex_client], USERS, port=dex_port, host=host, binary=binary) as dex:
        started = time.monotonic()
        alice = log_in(proxy, ALLOWED)
        assert any("/hub/oauth_callback" in u for u in alice.passed_through)
        assert alice.answer.status_code == 200, alice.passed_through
        server = wait_for(
            "alice's server ready",
            lambda: (
                user(proxy, token, ALLOWED.username).get("servers", {}).get("", {}).get("ready")
            ),
            timeout=300,
            every=2,
        )
        login_s = time.monotonic() - started
        assert server is True
        pod = core.read_namespaced_pod(f"jupyter-{ALLOWED.username}", fleet.hub)
        assert pod.spec.node_name == real_node.name
        assert user(proxy, token, ALLOWED.username)["admin"] is False

        mallory = log_in(proxy, OUTSIDER)
        assert mallory.answer.status_code == 403, mallory.passed_through
        assert user(proxy, token, OUTSIDER.username) == {"status": 404}

        ada = log_in(proxy, ADMIN)
        assert ada.answer.status_code == 200, ada.passed_through
        assert user(proxy, token, ADMIN.username)["admin"] is True
        dex_log = dex.log_text()

    # Secret hygiene: never in helm's release (values, manifest), runs, artifacts, files.
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        values = json.dumps(h.values(fleet.hub, fleet.hub))
        manifest = h.manifest(fleet.hub, fleet.hub)
        every = h.run("get", "values", fleet.hub, "-n", fleet.hub, "--all", "-o", "json")
    finally:
        h.close()
    assert "OAUTH_CLIENT_SECRET" in manifest and "hubfleet-oauth" in manifest
    for where, text in (("values", values), ("manifest", manifest), ("all values", every)):
        assert secret not in text, where
        assert base64.b64encode(secret.encode()).decode() not in text, where
    logs, artifacts = await history.logs(5000), await history.artifacts(limit=500)
    texts = [m.message for m in logs] + [json.dumps(a.data) for a in artifacts] + [dex_log]
    assert not [t[:60] for t in texts if secret in t]
    for path in fleet.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    print(
        f"\nnode login figures: deploys until the proxy address settled {deploy_s:.1f}s, "
        f"allowed login to server ready {login_s:.1f}s"
    )
