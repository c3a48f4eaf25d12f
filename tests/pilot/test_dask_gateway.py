"""The research preset's optional Dask Gateway: a research hub turns it on with one line
(`daskGateway: {enabled: true}`), deploy_hub installs it with the real helm into the real
test control plane (kube-apiserver + controllers + kwok), and the hub is wired to it.

Not real, and said where: kwok runs no containers, so "Ready" is kwok's (as for every
chart test here); the gateway's own process is not started."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from flows.deploy_hub import deploy_hub
from tasks.helm import Helm

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def research_hub(kube_pilot_fleet: Path, kube, kube_api, helm):
    """(cluster, hub) of a research hub whose values enable the gateway; uninstalled after."""
    cluster = next((kube_pilot_fleet / "clusters").iterdir()).name
    name = f"rs{uuid.uuid4().hex[:6]}"
    spec = kube_pilot_fleet / "clusters" / cluster / "cluster.yaml"
    spec.write_text(spec.read_text().replace("- name: lab\n", f"- name: {name}\n"))
    (kube_pilot_fleet / "clusters" / cluster / "lab.values.yaml").write_text(
        "daskGateway: {enabled: true, image: {name: registry.example.org/hubfleet-dask-gateway}}\n"
    )
    yield cluster, name
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        h.uninstall(name, name, wait_timeout="2m")
    except Exception:  # cleanup only: the test's own failure is what matters
        pass
    finally:
        h.close()
    try:
        client.CoreV1Api(kube_api).delete_namespace(name)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise


async def test_research_hub_with_dask_gateway_installs_and_is_wired(research_hub, kube_api) -> None:
    cluster, hub = research_hub
    result = await deploy_hub(cluster, hub, operator="test", gate="rollout")
    assert result.action == "install", result

    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    gateway = apps.read_namespaced_deployment("dask-gateway", hub)
    assert gateway.status.ready_replicas == 1
    container = gateway.spec.template.spec.containers[0]
    assert container.image == "registry.example.org/hubfleet-dask-gateway:2024.1.0"
    # The research preset sized it (its resources, and its per-cluster limits).
    assert container.resources.limits == {"cpu": "9", "memory": "36Gi"}
    gw_config = core.read_namespaced_config_map("dask-gateway", hub).data["dask_gateway_config.py"]
    assert 'c.ClusterConfig.worker_memory = "8G"' in gw_config
    assert "c.ClusterConfig.cluster_max_workers = 4" in gw_config
    assert "JupyterHubAuthenticator" in gw_config and "http://hub:8081/hub/api" in gw_config
    svc = core.read_namespaced_service("dask-gateway", hub)
    assert {p.port for p in svc.spec.ports} == {8000, 8786}

    # z2jh registers it as a hub service with a role, and tells user servers where it is
    # (hubfleet.values.dask_gateway_values, in the values z2jh hands the hub).
    secret = core.read_namespaced_secret("hub", hub)
    values = yaml.safe_load(base64.b64decode(secret.data["values.yaml"]))
    assert values["hub"]["services"]["dask-gateway"]["url"] == "http://dask-gateway:8000"
    assert values["hub"]["loadRoles"]["dask-gateway"]["scopes"] == ["read:users"]
    env = values["singleuser"]["extraEnv"]
    assert env["DASK_GATEWAY__ADDRESS"] == "http://dask-gateway:8000/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://dask-gateway:8786"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    # Hub and gateway share one token z2jh generated into its Secret (never a value in git).
    key_ref = {e.name: e for e in container.env}["JUPYTERHUB_API_TOKEN"].value_from.secret_key_ref
    assert (key_ref.name, key_ref.key) == ("hub", "hub.services.dask-gateway.apiToken")
    token = base64.b64decode(secret.data["hub.services.dask-gateway.apiToken"])
    assert len(token) >= 32
    # User servers may reach it; the gateway lets in only user servers, the proxy and hub.
    netpols = {
        p.metadata.name: p
        for p in client.NetworkingV1Api(kube_api).list_namespaced_network_policy(hub).items
    }
    assert "dask-gateway" in netpols
    egress = netpols["singleuser"].spec.egress
    assert any(
        (r.to or [None])[0] is not None
        and r.to[0].pod_selector is not None
        and (r.to[0].pod_selector.match_labels or {}).get("component") == "dask-gateway"
        for r in egress
    )

    # A redeploy keeps the token (users' running clusters keep working): z2jh's lookup.
    await deploy_hub(cluster, hub, operator="test", gate="rollout")
    again = core.read_namespaced_secret("hub", hub)
    assert base64.b64decode(again.data["hub.services.dask-gateway.apiToken"]) == token


def test_research_preset_sizes_the_gateway_but_leaves_it_off(pilot_fleet, helm) -> None:
    """Without the hub's `enabled: true` the preset only sizes it; nothing is rendered."""
    import yaml

    from hubfleet.charts import hub_chart
    from hubfleet.layers import merged
    from hubfleet.loader import load_fleet
    from hubfleet.values import hub_layers

    fleet = load_fleet(pilot_fleet("kubeconfig"))
    cluster = fleet.clusters[0]
    values = merged(hub_layers(fleet, cluster.name, cluster.hub("lab")))
    assert values["daskGateway"]["enabled"] is False
    assert values["daskGateway"]["cluster"]["maxWorkers"] == 4
    h = Helm(kubeconfig=None, binary=helm)
    try:
        values_file = Path(fleet.root) / "lab.merged.yaml"
        values_file.write_text(json.dumps(values))
        docs = yaml.safe_load_all(h.template("lab", hub_chart("4.4.0"), "lab", [values_file]))
        names = {d["metadata"]["name"] for d in docs if d}
    finally:
        h.close()
    assert "hub" in names and not any("dask-gateway" in n for n in names)
