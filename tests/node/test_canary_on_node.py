"""A per-hub canary on the real node: the shared z2jh hub, deployed at the fleet's chart
version (4.4.0), is moved to another chart version by its own `chart_version` override in
cluster.yaml, as an operator canaries a release on one hub before the fleet.

`deploy_hub` upgrades the release to that version and its gate passes on the node
(rollout, ops token, reachable, api, auth); then a deep check of the canary spawns a user
pod with KubeSpawner and runs Python in a kernel on it.

The other version is `NEXT_VERSION`, the 4.4.0 package published again under a new
version by the tests' chart repository (testenv/chartrepo.py): a stand-in for a
second z2jh release, which this machine cannot download. The failed upgrade rolled back on
the node is tests/node/test_deploy_on_node.py's.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from nodefleet import NodeHub

from flows.check_hub_health import check_hub_health
from flows.deploy_hub import deploy_hub
from testenv.chartrepo import NEXT_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.node]


def _release(helm, kube, hub: str) -> dict:
    out = subprocess.run(
        [
            str(helm),
            "--kubeconfig",
            str(kube.kubeconfig),
            "--kube-context",
            "hubfleet-testenv",
            "list",
            "-n",
            hub,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (release,) = [r for r in json.loads(out) if r["name"] == hub]
    return release


async def test_a_per_hub_canary_moves_one_hub_to_another_chart_version(
    node_hub: NodeHub, kube, helm
) -> None:
    before = _release(helm, kube, node_hub.hub)
    # The release is hubfleet's wrapper chart (helm/hub), versioned as the z2jh it wraps.
    assert before["chart"] == "hub-4.4.0" and before["status"] == "deployed"

    cluster_yaml = node_hub.cluster_dir / "cluster.yaml"
    text = cluster_yaml.read_text()
    assert "kind: standing," in text
    cluster_yaml.write_text(
        text.replace("kind: standing,", f"kind: standing, chart_version: '{NEXT_VERSION}',")
    )
    result = await deploy_hub(cluster=node_hub.cluster, hub=node_hub.hub, wait_timeout="5m")

    assert result.action == "upgrade", result
    assert (result.from_version, result.to_version) == ("4.4.0", NEXT_VERSION)
    assert result.health == "healthy", result
    after = _release(helm, kube, node_hub.hub)
    assert after["chart"] == f"hub-{NEXT_VERSION}" and after["status"] == "deployed"
    assert int(after["revision"]) == int(before["revision"]) + 1
    deep = await check_hub_health(node_hub.cluster, node_hub.hub, depth="deep")
    assert deep.verdict == "healthy", deep
    spawn = next(p for p in deep.probes if p.level == "spawn")
    assert spawn.ok and "ran code in a kernel" in str(spawn.detail), spawn
