"""The fleet of a hub on the real node, as the tests in tests/node write and remove it
(the fixtures that use it are in conftest.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from blocks.cluster_access import ClusterAccess
from tasks.helm import Helm
from testenv.nodevalues import node_values

#: The images a hub on the real node runs (built here, imported into the node's containerd).
HUB_IMAGES = ("k8s-hub", "proxy", "singleuser")


@dataclass(frozen=True)
class NodeFleet:
    """A fleet with one kubeconfig cluster (the test control plane) and one hub."""

    root: Path
    cluster: str
    hub: str

    @property
    def domain(self) -> str:
        return f"{self.hub}.{self.cluster}.hubfleet.test"

    @property
    def cluster_dir(self) -> Path:
        return self.root / "clusters" / self.cluster


@dataclass(frozen=True)
class NodeHub(NodeFleet):
    """The shared hub, deployed and healthy. `admin`: an admin service's API token; users
    log in with any name and `password` (DummyAuthenticator)."""

    admin: str
    password: str
    deploy_seconds: float


def write_node_fleet(root: Path, refs: dict[str, str], kube: Any) -> tuple[NodeFleet, Any]:
    """A fleet on disk under `root` for a new cluster/hub pair; (fleet, its ClusterAccess
    block, not yet saved: the caller saves it sync or async as its context allows)."""
    tag = uuid.uuid4().hex[:5]
    fleet = NodeFleet(root, f"node{tag}", f"hub{tag}")
    d = fleet.cluster_dir
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: node-fleet\nchart_version: 4.4.0\n")
    (d / "cluster.yaml").write_text(
        f"name: {fleet.cluster}\nprovider: kubeconfig\nkubeconfig: {{context: hubfleet-testenv}}\n"
        "hub_access: port-forward\nhubs:\n"
        f"  - {{name: {fleet.hub}, domain: {fleet.domain}, tier: staging, "
        f"kind: standing, values: [{fleet.hub}.values.yaml]}}\n"
    )
    (d / "cluster.values.yaml").write_text(yaml.safe_dump({"jupyterhub": node_values(refs)}))
    (d / f"{fleet.hub}.values.yaml").write_text("{}\n")
    access = ClusterAccess(
        kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
    )
    return fleet, access


def remove_hub(kube: Any, kube_api: Any, helm: Path, hub: str) -> None:
    """Uninstall the hub's release, delete what KubeSpawner made, then its namespace."""
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
    try:
        core.delete_namespace(hub)
    except client.ApiException as e:
        if e.status != 404:
            raise
