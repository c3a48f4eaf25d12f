"""The upstream Zero to JupyterHub chart 4.4.0 (``../shared/charts/jupyterhub-4.4.0.tgz``)
installed with helm into a namespace of the test cluster, its pods on the real node with
images built here: the chart's hub image (k8s-hub, JupyterHub 5.5.0 from the release's frozen
requirements), the proxy image (configurable-http-proxy 5.3.0) and the single-user image.
The hub and proxy pods become Ready with the chart's own security contexts (seccomp
RuntimeDefault, all capabilities dropped, uid 1000 / 65534), ``/hub/health`` answers 200
through the proxy (at the proxy pod's IP from the host, and at the proxy-public Service's
ClusterIP from the hub pod), and a user created through the hub's API gets a single-user
pod that becomes Ready and answers through the proxy.

Only local addresses are ever contacted: pod IPs on the node's bridge (the host routes the
pod range to the node's veth) and a Service IP from a pod on the node; the HTTP helpers
(hubhttp.py) use urllib without proxy handlers, so no proxy setting of the environment
applies.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from hubhttp import call
from kubernetes import client
from kubernetes.stream import stream
from waiting import wait_for

from testenv import hubimages
from testenv.nodevalues import node_values

pytestmark = [pytest.mark.kube, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO.parent / "shared" / "charts"
CHART = CHARTS / "jupyterhub-4.4.0.tgz"
CHART_HUB_REQUIREMENTS = CHARTS / "jupyterhub-4.4.0-images" / "images" / "hub" / "requirements.txt"
RELEASE = "z2jh"


def _values(images: dict[str, str], admin_token: str) -> dict:
    values = node_values(images)
    # Generated per test and written to a 0600 values file only; never printed.
    values["hub"]["services"] = {"test-admin": {"api_token": admin_token, "admin": True}}
    # No cluster DNS and no ingress controller here: the public Service stays a ClusterIP.
    values["proxy"]["service"] = {"type": "ClusterIP"}
    values["ingress"] = {"enabled": False}
    return values


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _pod_by_component(core: client.CoreV1Api, ns: str, component: str) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(ns, label_selector=f"component={component}").items
    return pods[0] if pods else None


def _describe(core: client.CoreV1Api, ns: str) -> str:
    """Pods, their container states and recent events: for failure messages."""
    lines = []
    for pod in core.list_namespaced_pod(ns).items:
        lines.append(f"pod {pod.metadata.name} {pod.status.phase} node={pod.spec.node_name}")
        for cs in pod.status.container_statuses or []:
            lines.append(f"  {cs.name}: ready={cs.ready} restarts={cs.restart_count} {cs.state}")
        for cs in pod.status.container_statuses or []:
            if cs.restart_count:
                try:
                    log = core.read_namespaced_pod_log(
                        pod.metadata.name, ns, container=cs.name, previous=True, tail_lines=40
                    )
                except client.ApiException as e:
                    log = f"(no log: {e.reason})"
                lines.append(f"  {cs.name} previous log:\n{log}")
    for ev in core.list_namespaced_event(ns).items[-25:]:
        lines.append(f"event {ev.involved_object.name}: {ev.reason}: {ev.message}")
    return "\n".join(lines)


def test_the_hub_image_carries_the_charts_frozen_requirements():
    """The copy the image is built from is the release's file, byte for byte."""
    ours = hubimages.requirements_path("k8s-hub").read_bytes()
    assert ours == CHART_HUB_REQUIREMENTS.read_bytes()
    wheels, sdists = hubimages._z2jh_requirements()
    assert "jupyterhub==5.5.0" in wheels and "psycopg2-binary==2.9.12" in wheels
    assert sdists == ("onetimepass==1.0.1",)


def test_z2jh_chart_runs_on_the_real_node(
    real_node, node_image_refs, kube, kube_api, kube_namespace, helm, tmp_path
):
    ns = kube_namespace
    core = client.CoreV1Api(kube_api)
    admin_token = secrets.token_hex(32)
    values = tmp_path / "values.json"  # JSON is YAML
    values.touch(mode=0o600)
    values.write_text(json.dumps(_values(node_image_refs, admin_token)))

    try:
        install = subprocess.run(
            [
                helm,
                "install",
                RELEASE,
                CHART,
                "--namespace",
                ns,
                "--values",
                values,
                "--kubeconfig",
                kube.kubeconfig,
                "--timeout",
                "2m",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        values.unlink()  # the admin token stays on disk no longer than helm needs it
    assert install.returncode == 0, install.stderr[-3000:]
    try:
        _check_release(core, ns, real_node, admin_token)
    finally:
        subprocess.run(
            [helm, "uninstall", RELEASE, "--namespace", ns, "--kubeconfig", kube.kubeconfig],
            capture_output=True,
            timeout=120,
        )
        # The spawned user pod is KubeSpawner's, not the release's.
        for pod in core.list_namespaced_pod(ns).items:
            core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=1)


def _check_release(core: client.CoreV1Api, ns: str, real_node, admin_token: str) -> None:
    # The chart's objects, and none of what the values turned off.
    deployments = {
        d.metadata.name
        for d in client.AppsV1Api(core.api_client).list_namespaced_deployment(ns).items
    }
    assert deployments == {"hub", "proxy"}, deployments

    def both_ready():
        pods = {c: _pod_by_component(core, ns, c) for c in ("hub", "proxy")}
        for pod in pods.values():
            for cs in (pod and pod.status.container_statuses) or []:
                if cs.restart_count >= 2:  # crashing: say why now, not after the timeout
                    raise AssertionError(f"{cs.name} restarted {cs.restart_count} times")
        return pods if all(p is not None and _ready(p) for p in pods.values()) else None

    try:
        pods = wait_for("hub and proxy pods Ready", both_ready, timeout=420, every=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe(core, ns)}") from None
    for pod in pods.values():
        assert pod.spec.node_name == real_node.name
    # The chart's security contexts are in force, not relaxed by the values.
    hub_pod, proxy_pod = pods["hub"], pods["proxy"]
    assert hub_pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    hub_sc = hub_pod.spec.containers[0].security_context
    assert (hub_sc.run_as_user, hub_sc.capabilities.drop) == (1000, ["ALL"])
    chp_sc = proxy_pod.spec.containers[0].security_context
    assert (chp_sc.run_as_user, chp_sc.capabilities.drop) == (65534, ["ALL"])
    assert chp_sc.seccomp_profile.type == "RuntimeDefault"

    proxy = f"http://{proxy_pod.status.pod_ip}:8000"
    status, body = wait_for(
        "/hub/health through the proxy",
        lambda: (r := call(f"{proxy}/hub/health")) and r[0] == 200 and r,
        timeout=60,
    )
    assert status == 200
    # The same through the proxy-public Service from a pod (kube-proxy's rules; the node's
    # own namespace has no route to the Service range, only its pods do): the hub pod's
    # Python asks the Service's ClusterIP.
    svc = core.read_namespaced_service("proxy-public", ns)
    assert svc.spec.type == "ClusterIP"
    out = stream(
        core.connect_get_namespaced_pod_exec,
        hub_pod.metadata.name,
        ns,
        command=[
            "python",
            "-c",
            "import urllib.request as u, sys; o = u.build_opener(u.ProxyHandler({}));"
            " print(o.open(sys.argv[1], timeout=10).status)",
            f"http://{svc.spec.cluster_ip}:80/hub/health",
        ],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert out.strip() == "200", out[-2000:]

    # Stretch: a user created through the hub's API gets a single-user pod on the node.
    api = f"{proxy}/hub/api"
    status, body = call(f"{api}/users/alice", admin_token, method="POST")
    assert status == 201, body[-500:]
    status, body = call(f"{api}/users/alice/server", admin_token, method="POST", timeout=30)
    assert status in (201, 202), body[-500:]

    def spawned():
        status, body = call(f"{api}/users/alice", admin_token)
        user = json.loads(body) if status == 200 else {}
        server = user.get("servers", {}).get("", {})
        return server if server.get("ready") else None

    try:
        wait_for("alice's server ready", spawned, timeout=300, every=3)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe(core, ns)}") from None
    user_pod = core.read_namespaced_pod("jupyter-alice", ns)
    assert _ready(user_pod) and user_pod.spec.node_name == real_node.name
    # The single-user server answers through the proxy (the admin service's token grants
    # access:servers, which the server checks with the hub).
    status, body = call(f"{proxy}/user/alice/api/status", admin_token)
    assert status == 200, body[-500:]
