"""deploy_hub / deploy_fleet on the real control plane with the real helm binary.

Real: Prefect server, helm 3, kube-apiserver + controllers + scheduler, kwok (pods Ready).
Not real, and said where it happens: kwok pods serve no HTTP, so hub-level health
failures are injected by replacing `flows.deploy_hub.hub_health`; a missing image is an
admission policy (see conftest `missing_image_policy`).
"""

from __future__ import annotations

import asyncio
import glob
import json
import tempfile
from pathlib import Path

import pytest
from kubernetes import client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter

from flows import deploy_hub as deploy_hub_mod
from flows.deploy_fleet import deploy_fleet
from flows.deploy_hub import HubDeployFailed, HubRolledBack, deploy_hub
from hubfleet.health import Verdict
from hubfleet.layers import ValuesInvalid
from hubfleet.loader import load_fleet
from hubfleet.results import HubHealth, Outcome
from tasks.helm import Helm
from tasks.locks import LockTimeout, ensure_concurrency_limits, hub_lock
from testenv import history
from testenv.chartrepo import NEXT_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]


def cluster_names(fleet: Path) -> list[str]:
    return sorted(p.name for p in (fleet / "clusters").iterdir())


def hub_names(fleet: Path, cluster: str) -> list[str]:
    """Hub names of a test cluster, in file order (staging first)."""
    text = (fleet / "clusters" / cluster / "cluster.yaml").read_text()
    return [ln.split(": ")[1] for ln in text.splitlines() if ln.strip().startswith("- name")]


def helm_history(helm_bin: Path, kube, release: str) -> list[dict]:
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm_bin)
    try:
        return h.history(release, release)
    finally:
        h.close()


def hub_image(kube_api, ns: str) -> str:
    dep = client.AppsV1Api(kube_api).read_namespaced_deployment("hub", ns)
    return dep.spec.template.spec.containers[0].image


async def run_logs(tag: str) -> list[str]:
    async with get_client() as c:
        runs = await c.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
        logs = await c.read_logs(LogFilter(flow_run_id={"any_": [r.id for r in runs]}))
    return [log.message for log in logs]


async def test_install_upgrade_health_rollback_uninstall(
    kube_fleet, kube, kube_api, helm, monkeypatch
) -> None:
    cluster = cluster_names(kube_fleet)[0]
    hub = hub_names(kube_fleet, cluster)[1]  # a prod hub
    # Install: pods Ready through kwok; the run is tagged like every hubfleet run.
    first = await deploy_hub(cluster=cluster, hub=hub, gate="rollout", operator="alice")
    assert first.action == "install" and first.revision == 1
    apps = client.AppsV1Api(kube_api)
    assert apps.read_namespaced_deployment("hub", hub).status.ready_replicas == 1
    assert apps.read_namespaced_deployment("proxy", hub).status.ready_replicas == 1
    ingress = client.NetworkingV1Api(kube_api).read_namespaced_ingress("jupyterhub", hub)
    assert ingress.spec.rules[0].host == f"{hub}.{cluster}.hubfleet.test"

    # Dry run of an upgrade to the next z2jh version shows what would change, changes nothing.
    fleet_yaml = kube_fleet / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text().replace("4.4.0", NEXT_VERSION))
    (kube_fleet / "clusters" / cluster / f"{hub}.values.yaml").write_text(
        "jupyterhub:\n  hub:\n    image: {tag: '4.1.1'}\n"
    )
    dry = await deploy_hub(cluster=cluster, hub=hub, dry_run=True)
    assert any(
        c["object"] == "Deployment/hub" and "spec.template" in c["change"] for c in dry.changes
    )
    assert len(helm_history(helm, kube, hub)) == 1

    # Upgrade to the next chart version.
    second = await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    assert (second.from_version, second.to_version, second.revision) == (
        "4.4.0",
        NEXT_VERSION,
        2,
    )
    assert hub_image(kube_api, hub).endswith(":4.1.1")

    # A post-deploy health failure (injected: nothing answers behind a kwok pod) rolls back.
    async def down(op):
        return HubHealth(
            hub=op.target,
            url=None,
            depth="shallow",
            verdict=Verdict.down,
            level="api",
            reason="api: GET /hub/api 500 (injected)",
        )

    monkeypatch.setattr(deploy_hub_mod, "hub_health", down)
    (kube_fleet / "clusters" / cluster / f"{hub}.values.yaml").write_text(
        "jupyterhub:\n  hub:\n    image: {tag: '4.2.0'}\n"
    )
    with pytest.raises(
        HubRolledBack, match=r"rolled back automatically from revision 3 to revision 2"
    ) as info:
        await deploy_hub(cluster=cluster, hub=hub, gate="health")
    assert "injected" in str(info.value)
    history = helm_history(helm, kube, hub)
    assert [h["status"] for h in history][-1] == "deployed"
    assert history[-1]["description"] == "Rollback to 2"
    assert hub_image(kube_api, hub).endswith(":4.1.1")
    for _ in range(40):  # logs reach the server asynchronously: wait
        if any("failed the health gate" in m for m in await run_logs(f"hub:{cluster}/{hub}")):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("no 'failed the health gate' log line")

    # Uninstall through the tasks module: the release and its workloads are gone.
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        h.uninstall(hub, hub, "60s")
        assert h.status(hub, hub) is None
    finally:
        h.close()
    assert apps.list_namespaced_deployment(hub).items == []


async def test_typo_is_refused_before_anything_is_applied(kube_fleet, kube_api) -> None:
    cluster = cluster_names(kube_fleet)[0]
    hub = hub_names(kube_fleet, cluster)[2]
    values = kube_fleet / "clusters" / cluster / f"{hub}.values.yaml"
    values.write_text("jupyterhub:\n  singleuser:\n    memmory: {limit: 2G}\n")
    with pytest.raises(ValuesInvalid) as info:
        await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    message = str(info.value)
    assert f"{hub}.values.yaml:3: jupyterhub.singleuser.memmory: unknown key" in message
    assert "Nothing was applied" in message
    names = [ns.metadata.name for ns in client.CoreV1Api(kube_api).list_namespace().items]
    assert hub not in names


async def test_bad_image_is_undone_by_atomic(
    kube_fleet, kube, kube_api, helm, missing_image_policy
):
    cluster = cluster_names(kube_fleet)[1]
    hub = hub_names(kube_fleet, cluster)[1]
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    # z2jh restarts the proxy once, at the first upgrade after install: at install its pod
    # template's checksum/auth-token hashes a second random draw, not the token the Secret
    # got. A redeploy absorbs that; from then on the proxy changes only with its config.
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    proxy_pods = {
        p.metadata.uid
        for p in client.CoreV1Api(kube_api)
        .list_namespaced_pod(hub, label_selector="component=proxy")
        .items
    }
    (kube_fleet / "clusters" / cluster / f"{hub}.values.yaml").write_text(
        f"jupyterhub:\n  hub:\n    image: {{tag: '{missing_image_policy}'}}\n"
    )
    with pytest.raises(HubDeployFailed, match="--atomic undid it"):
        await deploy_hub(cluster=cluster, hub=hub, gate="rollout", wait_timeout="15s")
    history = helm_history(helm, kube, hub)
    assert [h["status"] for h in history] == ["superseded", "superseded", "failed", "deployed"]
    assert hub_image(kube_api, hub).endswith(":4.4.0")  # z2jh 4.4.0's own hub image
    apps = client.AppsV1Api(kube_api)
    assert apps.read_namespaced_deployment("hub", hub).status.ready_replicas == 1
    # The proxy (what users reach) was never replaced while the bad revision was tried.
    assert {
        p.metadata.uid
        for p in client.CoreV1Api(kube_api)
        .list_namespaced_pod(hub, label_selector="component=proxy")
        .items
    } == proxy_pods


async def test_concurrent_deploys_of_one_hub_never_interleave(kube_fleet, kube, helm) -> None:
    cluster = cluster_names(kube_fleet)[1]
    hub = hub_names(kube_fleet, cluster)[0]
    fleet = load_fleet(kube_fleet)
    await ensure_concurrency_limits(fleet)
    # While someone holds the hub, a deploy with a lock timeout is refused, changing nothing.
    async with hub_lock(cluster, hub):
        with pytest.raises(LockTimeout, match="Nothing was changed"):
            await deploy_hub(cluster=cluster, hub=hub, gate="rollout", lock_timeout=1)
    assert helm_history(helm, kube, hub) == []
    # Two at once: the second waits for the first; helm never sees two operations at once.
    results = await asyncio.gather(
        deploy_hub(cluster=cluster, hub=hub, gate="rollout"),
        deploy_hub(cluster=cluster, hub=hub, gate="rollout"),
    )
    assert sorted(r.revision for r in results) == [1, 2]
    assert [h["status"] for h in helm_history(helm, kube, hub)] == ["superseded", "deployed"]
    # Both runs say they held the hub's lock (logs reach the server asynchronously: wait).
    held = 0
    for _ in range(40):
        logs = await run_logs(f"hub:{cluster}/{hub}")
        held = sum(m.startswith(f"holding lock: hub {cluster}/{hub}") for m in logs)
        if held >= 2:
            break
        await asyncio.sleep(0.5)
    assert held >= 2, f"expected two 'holding lock' log lines, got {held}"


async def test_staging_failure_blocks_only_its_cluster(
    kube_fleet, kube, kube_api, helm, missing_image_policy, tmp_path, monkeypatch
) -> None:
    a, b = cluster_names(kube_fleet)
    a_staging = hub_names(kube_fleet, a)[0]
    # This run's temp files in a directory of its own: other tests (other xdist workers)
    # make and remove such files in the machine's /tmp meanwhile.
    tmp = str(tmp_path / "tmp")
    Path(tmp).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", tmp)

    def private_files() -> set[str]:
        return set(glob.glob(f"{tmp}/hubfleet-secret-values-*")) | set(
            glob.glob(f"{tmp}/hubfleet-kubeconfig-*")
        )

    before = private_files()
    (kube_fleet / "clusters" / a / f"{a_staging}.values.yaml").write_text(
        f"jupyterhub:\n  hub:\n    image: {{tag: '{missing_image_policy}'}}\n"
    )
    secret = "0f" * 32
    from prefect.blocks.system import Secret

    await Secret(value={"jupyterhub": {"hub": {"cookieSecret": secret}}}).save(
        f"hub-values-{b}-{hub_names(kube_fleet, b)[1]}", overwrite=True
    )
    state = await deploy_fleet(
        selection=[a, b], gate="rollout", wait_timeout="15s", operator="nightly", return_state=True
    )
    assert state.is_failed() and "hub(s) not deployed" in state.message
    result = await state.aresult(raise_on_failure=False)
    outcomes = {f"{o.cluster}/{o.hub}": o for o in result.outcomes}
    a_prod = [f"{a}/{h}" for h in hub_names(kube_fleet, a)[1:]]
    # No previous revision to roll back to: failed (the outcome is a field, not a message).
    assert outcomes[f"{a}/{a_staging}"].outcome is Outcome.failed
    assert all(outcomes[h].outcome is Outcome.blocked for h in a_prod)
    assert all(outcomes[h].why.startswith("health gate: staging failed") for h in a_prod)
    assert all(outcomes[f"{b}/{h}"].outcome is Outcome.deployed for h in hub_names(kube_fleet, b))
    for h in hub_names(kube_fleet, a)[1:]:
        assert helm_history(helm, kube, h) == []
    # The secret value reached the cluster, and nowhere else: no log, artifact, temp file.
    b_prod = hub_names(kube_fleet, b)[1]
    data = client.CoreV1Api(kube_api).read_namespaced_secret("hub", b_prod).data
    import base64

    assert base64.b64decode(data["hub.config.JupyterHub.cookie_secret"]).decode() == secret
    logs, artifacts = await history.logs(1000), await history.artifacts(limit=500)
    assert all(secret not in m.message for m in logs)
    assert all(secret not in json.dumps(a.data) for a in artifacts)
    # No secret-values or kubeconfig temp file of this run is left behind.
    assert private_files() <= before
    # The support chart went first on both clusters.
    assert client.SchedulingV1Api(kube_api).read_priority_class("hubfleet-core").value == 1000000


async def test_upgrade_fleet_moves_only_stale_hubs_and_reports_orphans(
    kube_fleet, kube, kube_api, helm, monkeypatch
) -> None:
    from flows.deploy_fleet import remove_orphans
    from flows.upgrade_fleet import upgrade_fleet

    b = cluster_names(kube_fleet)[1]
    hubs = hub_names(kube_fleet, b)
    first = await deploy_fleet(selection=[b], gate="rollout")
    assert [r.outcome for r in first.outcomes] == [Outcome.deployed, Outcome.deployed]

    # An orphan: a hub namespace and a release the fleet does not list.
    ghost = f"ghost{b}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=ghost, labels={"hubfleet.io/managed": "true", "hubfleet.io/hub": ghost}
            )
        )
    )

    # Nothing to upgrade: every hub runs the fleet's chart version; orphans are reported.
    same = await upgrade_fleet(selection=[b], gate="rollout")
    assert same.outcomes == []
    assert f"namespace {ghost}" in same.orphans[b]

    # The fleet moves to the next z2jh: a dry run lists the upgrades, the real run does them.
    fleet_yaml = kube_fleet / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text().replace("4.4.0", NEXT_VERSION))
    dry = await upgrade_fleet(selection=[b], dry_run=True)
    assert [(c["hub"], c["from_version"], c["to_version"]) for c in dry.changes] == [
        (h, "4.4.0", NEXT_VERSION) for h in hubs
    ]
    assert [h["chart"] for h in helm_history(helm, kube, hubs[0])] == ["hub-4.4.0"]
    upgraded = await upgrade_fleet(selection=[b], gate="rollout")
    assert [
        (f"{r.cluster}/{r.hub}", r.from_version, r.to_version, r.outcome) for r in upgraded.outcomes
    ] == [(f"{b}/{h}", "4.4.0", NEXT_VERSION, Outcome.deployed) for h in hubs]
    # The orphan was reported in every run and is still there: removal needs the parameter.
    assert f"namespace {ghost}" in upgraded.orphans[b]
    assert core.read_namespace(ghost).status.phase == "Active"
    # What remove_orphans=true runs, limited to this test's orphan (the test clusters share
    # one control plane, so "everything not in this fleet" includes other tests' hubs).
    await remove_orphans(load_fleet(kube_fleet).cluster(b), [f"namespace {ghost}"])
    gone = [ns.metadata for ns in core.list_namespace().items if ns.metadata.name == ghost]
    assert gone == [] or gone[0].deletion_timestamp is not None


async def test_fleet_run_records_every_hub_and_frees_its_group_locks(kube_fleet) -> None:
    """deploy_fleet takes its hubs' locks per group of `parallelism` (tasks.locks.group_locks)
    and passes them down: every hub's deploy is still its own run with its audit tags and a
    `holds:` tag naming the hub's lock, at most `parallelism` hubs of a cluster change at
    once (here 1, with a wave of 2), and no lock slot stays taken afterwards."""
    import itertools

    from hubfleet.audit import to_row
    from tasks.locks import HOLDS, cluster_limit, deploy_limit

    fleet_yaml = kube_fleet / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text().replace("parallelism: 2", "parallelism: 1"))
    a, b = cluster_names(kube_fleet)
    state = await deploy_fleet(
        selection=[a, b], gate="rollout", wave_size=2, operator="nightly", return_state=True
    )
    result = await state.aresult()
    assert [o.outcome for o in result.outcomes] == [Outcome.deployed] * 5
    async with get_client() as c:
        runs = await c.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["op:deploy_hub"]))
        )
        fleet_run = await c.read_flow_run(state.state_details.flow_run_id)
        limits = {
            lim.name: lim.active_slots
            for lim in await c.read_global_concurrency_limits(limit=200)
            if lim.name.endswith((a, b)) or f".{a}." in lim.name or f".{b}." in lim.name
        }
    mine = [r for r in runs if f"cluster:{a}" in r.tags or f"cluster:{b}" in r.tags]
    by_hub: dict[str, list] = {}
    for run in mine:
        by_hub.setdefault(next(t for t in run.tags if t.startswith("hub:")), []).append(run)
    for cluster in (a, b):
        for hub in hub_names(kube_fleet, cluster):
            (run,) = by_hub[f"hub:{cluster}/{hub}"]  # exactly one run per hub
            assert run.state.name == "Completed"
            assert {"op:deploy_hub", f"cluster:{cluster}", "operator:nightly"} <= set(run.tags)
            assert f"{HOLDS}hubfleet.hub.{cluster}.{hub}" in run.tags
            row = to_row(run.model_dump(mode="json"), "http://ui")
            assert (row.op, row.target, row.operator, row.outcome) == (
                "deploy_hub",
                f"{cluster}/{hub}",
                "nightly",
                "Completed",
            )
        # Parallelism 1: the cluster's hub runs never overlap, though its wave has two hubs.
        spans = sorted((r.start_time, r.end_time) for r in mine if f"cluster:{cluster}" in r.tags)
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(spans)), spans
    assert not any(t.startswith(HOLDS) for t in fleet_run.tags)
    # Every lock of both clusters is free again (the group leases were released).
    assert limits and all(v == 0 for v in limits.values()), limits
    assert cluster_limit(a) in limits and deploy_limit(b) in limits


async def test_fleet_run_without_its_deploy_limit_fails_those_hubs_only(
    kube_fleet, kube, helm
) -> None:
    """A lock the fleet run cannot take (the cluster's deploy limit was deleted): that
    cluster's hubs fail or are blocked, saying why, nothing is deployed there; the other
    cluster carries on. Strict locking: a missing limit is never a silent no-lock."""
    from tasks.locks import deploy_limit, ensure_concurrency_limits_once

    a, b = cluster_names(kube_fleet)
    await ensure_concurrency_limits_once(load_fleet(kube_fleet))
    async with get_client() as c:
        await c.delete_global_concurrency_limit_by_name(deploy_limit(a))
    result = await deploy_fleet(selection=[a, b], gate="rollout", return_state=True)
    summary = await result.aresult(raise_on_failure=False)
    outcomes = {o.hub: o for o in summary.outcomes}
    a_hubs = hub_names(kube_fleet, a)
    assert outcomes[a_hubs[0]].outcome is Outcome.failed
    assert "do not exist" in outcomes[a_hubs[0]].why and deploy_limit(a) in outcomes[a_hubs[0]].why
    assert all(outcomes[h].outcome is Outcome.blocked for h in a_hubs[1:])
    assert all(outcomes[h].outcome is Outcome.deployed for h in hub_names(kube_fleet, b))
    for hub in a_hubs:
        assert helm_history(helm, kube, hub) == []
