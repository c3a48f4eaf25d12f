"""The k8s level against the real control plane (kube-apiserver, scheduler, kwok nodes).

The hub's namespace gets a `hub` Deployment that becomes Ready (kwok runs its pod) and a
`proxy` Deployment whose pod can never be scheduled (a nodeSelector no node matches).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from waiting import wait_for

from blocks.cluster_access import ClusterAccess
from flows.check_hub_health import check_hub_health
from hubfleet.health import judge_k8s
from tasks import probes

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server", "health_fleet")]
NAMESPACE = "hc-k8s"  # the hub `kc/hc-k8s` of the test fleet lives in its own namespace


def deployment(name: str, selector: dict[str, str]) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    node_selector=selector,
                    containers=[client.V1Container(name="c", image="registry.k8s.io/pause:3.10")],
                ),
            ),
        ),
    )


@pytest.fixture
def hub_namespace(kube_api: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    try:
        yield NAMESPACE
    finally:
        core.delete_namespace(NAMESPACE)


async def test_deployment_that_never_gets_ready_is_reported_with_the_pods_reason(
    kube: Any, kube_api: Any, hub_namespace: str, kube_namespace: str
) -> None:
    text = kube.kubeconfig.read_text()
    context = yaml.safe_load(text)["current-context"]
    await ClusterAccess(kubeconfig=text, context=context, server=kube.server).save(
        "kc", overwrite=True
    )
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(
        hub_namespace, deployment("hub", {"hub.jupyter.org/node-purpose": "core"})
    )
    apps.create_namespaced_deployment(
        hub_namespace, deployment("proxy", {"hubfleet.test/no-such-pool": "true"})
    )
    wait_for(
        "the hub Deployment to be Ready (kwok)",
        lambda: apps.read_namespaced_deployment("hub", hub_namespace).status.ready_replicas,
        timeout=60,
    )
    wait_for(
        "the scheduler to mark the proxy pod Unschedulable",
        lambda: any(
            c.reason == "Unschedulable"
            for p in core.list_namespaced_pod(hub_namespace, label_selector="app=proxy").items
            for c in (p.status.conditions or [])
        ),
        timeout=60,
    )

    report = await check_hub_health("kc", "hc-k8s", depth="k8s")

    k8s = next(p for p in report.probes if p.level == "k8s")
    assert k8s.status == "FAIL", report
    assert "deployment proxy 0/1 ready" in k8s.reason, k8s.reason
    assert "Unschedulable" in k8s.reason and "node" in k8s.reason, k8s.reason
    assert "deployment hub" not in k8s.reason  # the Ready one is not blamed
    # The hub's domain does not resolve here, so it is down at reachable; k8s says why.
    assert report.verdict == "down" and report.level == "reachable"

    # No false alarm: a namespace whose hub and proxy are Ready passes the same probe.
    for name in ("hub", "proxy"):
        apps.create_namespaced_deployment(
            kube_namespace, deployment(name, {"hub.jupyter.org/node-purpose": "core"})
        )
    for name in ("hub", "proxy"):
        wait_for(
            f"{name} in {kube_namespace} to be Ready",
            lambda n=name: apps.read_namespaced_deployment(n, kube_namespace).status.ready_replicas,
            timeout=60,
        )
    # z2jh's continuous image puller, as a hub's values may enable it: a DaemonSet, read
    # and judged with the Deployments (kwok runs its pod on each core node).
    puller = deployment("continuous-image-puller", {"hub.jupyter.org/node-purpose": "core"})
    apps.create_namespaced_daemon_set(
        kube_namespace,
        client.V1DaemonSet(
            metadata=puller.metadata, spec=client.V1DaemonSetSpec(
                selector=puller.spec.selector, template=puller.spec.template
            ),
        ),
    )  # fmt: skip

    def puller_ready() -> bool:
        status = apps.read_namespaced_daemon_set("continuous-image-puller", kube_namespace).status
        return bool(status.desired_number_scheduled) and (
            status.number_ready == status.desired_number_scheduled
        )

    wait_for(
        "the image puller DaemonSet to be Ready on the core nodes (kwok)", puller_ready, timeout=60
    )
    seen = probes.observe_namespace(yaml.safe_load(text), context, kube_namespace)
    sets = [d for d in seen[0] if d.kind == "daemonset"]
    assert [s.name for s in sets] == ["continuous-image-puller"] and sets[0].desired >= 1
    fine = judge_k8s(kube_namespace, *seen)
    assert fine.ok, fine.reason
    assert "2 deployments and 1 daemonsets ready" in str(fine.detail)
