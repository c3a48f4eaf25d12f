"""Credential rotation on a Kubernetes hub running on the real node, through hubfleet's own
`rotate_credentials` flow and the cluster's `hub_access: port-forward` (the flow reaches the
hub through the Kubernetes API; nothing else is exposed).

- The ops token (a `hubfleet-ops` token in the hub's database, stored in its `HubOpsToken`
  block): after the rotation the hub refuses the old token (403) and accepts the new one,
  the block holds the new token and still names the hub's domain, and the `auth` level of
  the health check passes with it.
- The hub's own secrets (z2jh's Secret `hub`: cookie secret, proxy auth token): a user
  logged in before the rotation keeps a cookie the restarted hub refuses (the home page
  sends them to the login page), a fresh login works, and the restarted proxy refuses
  its old auth token (403 from its API) while the new one works.

Nothing is a stand-in: JupyterHub, configurable-http-proxy, the kubelet and the images
(built here) are real. No secret value (tokens, cookie secret, password) is printed or
reaches a run's logs or artifacts.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from hubhttp import Browser, call
from kubernetes import client
from nodefleet import NodeHub

from flows.check_hub_health import check_hub_health
from flows.rotate_credentials import rotate_credentials
from hubfleet.localhub import OPS_USER
from tasks import jupyterhub_api as api
from tasks.hub_credentials import load_ops_token
from tasks.hub_secrets import COOKIE_SECRET, PROXY_TOKEN
from tasks.kube_portforward import PortForward
from testenv import history

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

#: z2jh's proxy: the public port users reach, and the API port the hub configures routes on.
PUBLIC, PROXY_API = 8000, 8001


def hub_secret(kube_api: Any, hub: str) -> dict[str, str]:
    secret: Any = client.CoreV1Api(kube_api).read_namespaced_secret("hub", hub)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def forward(kube_api: Any, hub: str, port: int) -> PortForward:
    return PortForward(kube_api, hub, "component=proxy", port)


async def assert_no_leak(*values: str) -> None:
    """None of `values` is in any run's log lines or artifacts."""
    logs, artifacts = await history.logs(5000), await history.artifacts(limit=1000)
    for value in values:
        assert all(value not in m.message for m in logs)
        assert all(value not in json.dumps(a.data) for a in artifacts)


async def test_ops_token_rotation_through_the_port_forward(node_hub: NodeHub, kube_api) -> None:
    cluster, hub = node_hub.cluster, node_hub.hub
    before = await load_ops_token(cluster, hub)
    assert before is not None and before.url == f"https://{node_hub.domain}"
    old = before.token.get_secret_value()

    started = time.monotonic()
    result = await rotate_credentials(scope=f"hub:{cluster}/{hub}", max_age=timedelta(0))
    took = time.monotonic() - started
    print(f"ops-token rotation on the real node: {took:.1f}s")
    [done] = [r for r in result.rotated if r.kind == "hub-ops-token"]
    assert done.owner == f"{cluster}/{hub}" and done.old == before.token_id
    assert done.verified_as == OPS_USER and done.new != before.token_id

    after = await load_ops_token(cluster, hub)
    assert after is not None and after.token_id == done.new
    new = after.token.get_secret_value()
    assert new != old and after.last_rotated is not None
    # The block still says where the hub lives (its domain), not the relay it was reached by.
    assert after.url == f"https://{node_hub.domain}"
    with forward(kube_api, hub, PUBLIC) as relay:
        assert call(f"{relay.url}/hub/api/user", old)[0] == 403
        assert api.whoami(relay.url, new)["name"] == OPS_USER
        assert api.list_tokens(relay.url, new, OPS_USER) == [done.new]
    report = await check_hub_health(cluster, hub, depth="auth")
    assert report.verdict == "healthy", report
    await assert_no_leak(old, new, node_hub.admin)


async def test_hub_secret_rotation_logs_users_out_and_the_proxy_refuses_its_old_token(
    node_hub: NodeHub, kube_api
) -> None:
    cluster, hub = node_hub.cluster, node_hub.hub
    before = hub_secret(kube_api, hub)
    old_token = before[PROXY_TOKEN]

    user = Browser()
    with forward(kube_api, hub, PUBLIC) as relay:
        assert user.login(relay.url, "ursula", node_hub.password) == 302
        assert user.logged_in(relay.url)
    assert "jupyterhub-hub-login" in user.cookies
    kept = dict(user.cookies)  # the browser keeps its cookies across the rotation
    with forward(kube_api, hub, PROXY_API) as proxy_api:
        assert call(f"{proxy_api.url}/api/routes", old_token)[0] == 200

    started = time.monotonic()
    result = await rotate_credentials(scope=f"hub-secret:{cluster}/{hub}")
    took = time.monotonic() - started
    print(f"hub secret rotation on the real node (proxy, then hub restarted): {took:.1f}s")
    [done] = result.rotated
    assert done.kind == "hub-secret" and done.owner == f"{cluster}/{hub}"
    after = hub_secret(kube_api, hub)
    new_token = after[PROXY_TOKEN]
    assert new_token != old_token and after[COOKIE_SECRET] != before[COOKIE_SECRET]

    # New pods (the relay picks the Ready proxy pod again).
    with forward(kube_api, hub, PUBLIC) as relay:
        assert not Browser(kept).logged_in(relay.url)  # the old cookie: back to the login
        fresh = Browser()
        assert fresh.login(relay.url, "ursula", node_hub.password) == 302
        assert fresh.logged_in(relay.url)
        assert fresh.cookies["jupyterhub-hub-login"] != kept["jupyterhub-hub-login"]
    with forward(kube_api, hub, PROXY_API) as proxy_api:
        assert call(f"{proxy_api.url}/api/routes", old_token)[0] == 403
        assert call(f"{proxy_api.url}/api/routes", new_token)[0] == 200
    # hubfleet still operates the hub: its ops token lives in the hub's database.
    report = await check_hub_health(cluster, hub, depth="auth")
    assert report.verdict == "healthy", report
    await assert_no_leak(
        old_token,
        new_token,
        before[COOKIE_SECRET],
        after[COOKIE_SECRET],
        node_hub.password,
        *kept.values(),
    )
