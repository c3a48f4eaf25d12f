"""A hub whose `helm upgrade --wait` succeeded but whose pods are not Ready is never
reported deployed.

Real: helm 3, the z2jh chart, the control plane, the deployment controller, kwok. helm's
`--wait` counts a paused Deployment as ready (helm's `PausedAsReady`), so pausing the hub's
Deployment (`kubectl rollout pause deployment/hub`, as an operator debugging it would)
makes helm report success for a revision whose hub pod was never created. Nothing is
injected: the gate reads the Deployment and the pods through the API.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from flows.deploy_fleet import deploy_fleet
from flows.deploy_hub import HubRolledBack, deploy_hub
from hubfleet.results import Outcome
from tasks.helm import Helm

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]


def history(helm_bin, kube, release: str) -> list[dict]:
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm_bin)
    try:
        return h.history(release, release)
    finally:
        h.close()


def hub_names(fleet, cluster: str) -> list[str]:
    text = (fleet / "clusters" / cluster / "cluster.yaml").read_text()
    return [ln.split(": ")[1] for ln in text.splitlines() if ln.strip().startswith("- name")]


async def test_helm_success_without_ready_pods_is_rolled_back(
    kube_fleet, kube, kube_api, helm
) -> None:
    cluster = sorted(p.name for p in (kube_fleet / "clusters").iterdir())[0]
    staging, hub = hub_names(kube_fleet, cluster)[:2]
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    apps = client.AppsV1Api(kube_api)
    apps.patch_namespaced_deployment("hub", hub, {"spec": {"paused": True}})
    values = kube_fleet / "clusters" / cluster / f"{hub}.values.yaml"
    values.write_text("jupyterhub:\n  hub:\n    extraEnv: {HUBFLEET_TEST: changed}\n")

    # The weakest gate (no probes) still checks the pods: helm's success is not enough.
    with pytest.raises(HubRolledBack) as info:
        await deploy_hub(cluster=cluster, hub=hub, gate="none")
    message = str(info.value)
    assert "helm reported success, but deployment hub: 0/1 on the new revision" in message
    assert "(paused)" in message and "rolled back automatically from revision 2" in message
    revisions = history(helm, kube, hub)
    # helm itself called revision 2 a success; hubfleet rolled it back.
    assert [r["status"] for r in revisions] == ["superseded", "superseded", "deployed"]
    assert revisions[-1]["description"] == "Rollback to 1"
    env = apps.read_namespaced_deployment("hub", hub).spec.template.spec.containers[0].env
    assert "HUBFLEET_TEST" not in {e.name for e in env or []}

    # In a fleet run the same hub is reported rolled back, never deployed.
    state = await deploy_fleet(
        selection=[f"{cluster}/{staging}", f"{cluster}/{hub}"], gate="none", return_state=True
    )
    result = await state.aresult(raise_on_failure=False)
    outcomes = {o.hub: o.outcome for o in result.outcomes}
    assert outcomes == {staging: Outcome.deployed, hub: Outcome.rolled_back}
    assert state.is_failed()

    # Resumed, the same change deploys and its pod is Ready.
    apps.patch_namespaced_deployment("hub", hub, {"spec": {"paused": False}})
    done = await deploy_hub(cluster=cluster, hub=hub, gate="none")
    assert done.health == "unchecked"
    assert apps.read_namespaced_deployment("hub", hub).status.ready_replicas == 1
