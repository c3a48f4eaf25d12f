"""Pre-warm on the real node: the support chart's user placeholders take real capacity, and a
user's pod preempts one of them.

The cluster's `support.values.yaml` (validated against helm/support's schema, as an
operator's would be) puts the placeholders on the real node (its nodeSelector and
toleration), runs them from the node's pause image (`pullPolicy: Never`: imported, never
pulled) and sizes them so that N of them fill what the node has left: the scheduler then has
no room for a user pod without evicting one. `deploy_support(placeholders=N)` (hubfleet's
pre-warm path) installs it; the N pods run on the node. A user then starts a server through
the shared hub (KubeSpawner, priority 0): the scheduler preempts one placeholder (priority
-10), the user's pod runs on the node, and the evicted placeholder waits Pending for room,
which it gets back when the user's server stops.

Memory requests are what fill the node: the single-user pod requests memory (the chart's
guarantee) and no CPU. The pause containers use next to nothing; what they hold is the
scheduler's capacity, as placeholders on a cloud node do.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import yaml
from hubhttp import call, server_ready, stop_server
from kubernetes import client
from kubernetes.utils import parse_quantity
from nodefleet import NodeHub
from waiting import wait_for

from flows.deploy_fleet import SUPPORT_NAMESPACE, SUPPORT_RELEASE, deploy_support
from tasks.helm import Helm
from tasks.kube_portforward import PortForward
from testenv import images
from testenv.node import POD_PLACEMENT
from testenv.nodevalues import node_values

pytestmark = [pytest.mark.kube, pytest.mark.node, pytest.mark.usefixtures("prefect_server")]

N = 3
PLACEHOLDERS = "app.kubernetes.io/component=user-placeholder"


def user_request() -> Decimal:
    """The memory a user's pod requests: the chart's guarantee in the node's values, as
    KubeSpawner reads it (its K, M, G, T are powers of 1024: "64M" is 64 MiB)."""
    values = node_values({"k8s-hub": "x:1", "proxy": "x:1", "singleuser": "x:1"})
    guarantee = str(values["singleuser"]["memory"]["guarantee"])
    return parse_quantity(guarantee + "i" if guarantee[-1] in "KMGT" else guarantee)


def free_memory(core: client.CoreV1Api, node: str) -> Decimal:
    """The node's allocatable memory minus what its pods request (as the scheduler counts:
    every pod bound to the node that has not finished, terminating ones included)."""
    alloc = parse_quantity(core.read_node(node).status.allocatable["memory"])
    pods: Any = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    used = Decimal(0)
    for pod in pods:
        if pod.status.phase in ("Succeeded", "Failed"):
            continue
        for c in pod.spec.containers:
            requests = (c.resources and c.resources.requests) or {}
            used += parse_quantity(requests.get("memory", "0"))
    return alloc - used


def placeholders(core: client.CoreV1Api) -> dict[str, list[Any]]:
    """The live placeholder pods by phase."""
    by_phase: dict[str, list[Any]] = {}
    for pod in core.list_namespaced_pod(SUPPORT_NAMESPACE, label_selector=PLACEHOLDERS).items:
        if pod.metadata.deletion_timestamp is None:
            by_phase.setdefault(pod.status.phase, []).append(pod)
    return by_phase


def running_on(core: client.CoreV1Api, node: str) -> int:
    return sum(p.spec.node_name == node for p in placeholders(core).get("Running", []))


async def test_placeholders_take_real_capacity_and_a_user_pod_preempts_one(
    node_hub: NodeHub, kube, kube_api, real_node, helm
) -> None:
    core = client.CoreV1Api(kube_api)
    need = user_request()
    free = free_memory(core, real_node.name)
    each = int(free / N / 2**20)  # MiB: N placeholders leave less than N MiB of the node
    assert each * 2**20 >= need, f"the node has too little memory left ({free} B) for the test"
    values = {
        "userPlaceholder": {
            "image": {
                "name": images.PAUSE_IMAGE.rsplit(":", 1)[0],
                "tag": images.PAUSE_IMAGE.rsplit(":", 1)[1],
                "pullPolicy": "Never",
            },
            "resources": {"requests": {"cpu": "1m", "memory": f"{each}Mi"}},
            **POD_PLACEMENT,
        }
    }
    support_file = node_hub.cluster_dir / "support.values.yaml"
    support_file.write_text(yaml.safe_dump(values))
    try:
        started = time.monotonic()
        done = await deploy_support(node_hub.cluster, placeholders=N)
        assert done.placeholders == N
        wait_for(f"{N} placeholders Running", lambda: running_on(core, real_node.name) == N, 120)
        warm = time.monotonic() - started
        # Real capacity: what is left on the node is less than one user pod requests.
        left = free_memory(core, real_node.name)
        assert left < need, (left, need)

        with PortForward(kube_api, node_hub.hub, "component=proxy", 8000) as relay:
            hub_api = f"{relay.url}/hub/api"
            assert call(f"{hub_api}/users/pat", node_hub.admin, "POST")[0] in (201, 409)
            started = time.monotonic()
            server_ready(hub_api, node_hub.admin, "pat", timeout=240)
            took = time.monotonic() - started
            pod = core.read_namespaced_pod("jupyter-pat", node_hub.hub)
            assert pod.status.phase == "Running" and pod.spec.node_name == real_node.name
            requests = pod.spec.containers[0].resources.requests
            assert parse_quantity(requests["memory"]) == need
            print(
                f"\npre-warm on the real node: {N} placeholders of {each}Mi Running in "
                f"{warm:.1f}s; a user's server ready in {took:.1f}s, preempting one"
            )
            # One placeholder was preempted (the scheduler says so on the pod); the
            # Deployment's replacement waits for room.
            preempted = core.list_namespaced_event(
                SUPPORT_NAMESPACE, field_selector="reason=Preempted"
            ).items
            assert preempted, "no placeholder was preempted"
            assert "user-placeholder" in preempted[-1].involved_object.name
            wait_for(
                f"{N - 1} placeholders Running and one Pending",
                lambda: (
                    running_on(core, real_node.name) == N - 1
                    and len(placeholders(core).get("Pending", [])) == 1
                ),
                60,
            )
            # The user leaves: the waiting placeholder takes the room back.
            stop_server(hub_api, node_hub.admin, "pat")
        wait_for(
            f"{N} placeholders Running again", lambda: running_on(core, real_node.name) == N, 120
        )
    finally:
        support_file.unlink(missing_ok=True)
        # The support release is the cluster's: other tests install their own.
        h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
        try:
            h.uninstall(SUPPORT_RELEASE, SUPPORT_NAMESPACE, wait_timeout="2m")
        finally:
            h.close()
