"""A fleet upgrade against an API server small enough to throttle: the cluster's client-side
rate limit (cluster.yaml `api_qps`, `api_burst`) and its parallelism keep hubfleet's 429s
at zero, and every hub ends deployed on the new version with its pods Ready.

Real: a control plane of its own (kube-apiserver with `--max-requests-inflight` 3, etcd,
controllers, kwok nodes), helm 3 with the z2jh chart, the Prefect server, deploy_fleet. The
429s are read from the API server's /metrics (apiserver_request_total by code) and its
audit log (by client). hubfleet reaches it as a cluster-admin through RBAC, not as
system:masters, whom the in-flight limits exempt. The test first shows the API server
does answer that identity 429 when more requests arrive at once than it takes, so a zero
is a measurement, not a given.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client, config

from blocks.cluster_access import ClusterAccess
from flows.deploy_fleet import deploy_fleet
from flows.upgrade_fleet import upgrade_fleet
from hubfleet.results import Outcome
from testenv.chartrepo import NEXT_VERSION
from testenv.controlplane import ControlPlane
from testenv.volumes import create_volumes

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]

HUBS = 6
INFLIGHT = 3


@pytest.fixture(scope="module")
def small_apiserver(testenv_tools, prefect_server) -> Iterator[ControlPlane]:
    cp = ControlPlane(testenv_tools, max_requests_inflight=INFLIGHT, audit_log=True)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def count_429(cp: ControlPlane) -> int:
    text = cp.metrics()
    return sum(
        int(float(v))
        for v in re.findall(r'^apiserver_request_total\{[^}]*code="429"[^}]*\} (\S+)$', text, re.M)
    )


def test_the_small_apiserver_does_throttle(small_apiserver: ControlPlane) -> None:
    """More slow reads at once than its 2 in-flight slots: the rest are answered 429.

    A LIST at a resourceVersion the cache has not reached yet is held (about 3 s, then
    504 "Too large resource version"): 3 of them fill the slots for that long."""
    cp = small_apiserver
    before = count_429(cp)
    assert cp.deployer_kubeconfig is not None
    deployer = config.new_client_from_config(config_file=str(cp.deployer_kubeconfig))
    core = client.CoreV1Api(deployer)
    ahead = str(int(core.list_namespace(limit=1).metadata.resource_version) + 10_000_000)

    def read(_: int) -> int:
        # As the deployer: system:masters (the admin) is exempt from the in-flight limits.
        try:
            core.list_namespaced_config_map(
                "default", resource_version=ahead, resource_version_match="NotOlderThan"
            )
            return 200
        except client.exceptions.ApiException as exc:
            return int(exc.status)

    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(read, range(8)))
    finally:
        deployer.close()
    assert 429 in codes, codes
    assert count_429(cp) - before >= codes.count(429)  # the controllers may get some too


def write_fleet(root: Path, cluster: str, hubs: list[str]) -> None:
    d = root / "clusters" / cluster
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: t\nparallelism: 2\nchart_version: 4.4.0\n")
    (d / "cluster.values.yaml").write_text(
        "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
    )
    body = f"name: {cluster}\nprovider: kubeconfig\nkubeconfig: {{context: hubfleet-testenv}}\n"
    body += "api_qps: 5\napi_burst: 10\nhubs:\n"
    for i, hub in enumerate(hubs):
        tier = "staging" if i == 0 else "prod"
        body += textwrap.indent(
            f"- {{name: {hub}, domain: {hub}.t.test, tier: {tier}, kind: standing}}\n", "  "
        )
    (d / "cluster.yaml").write_text(body)


async def test_fleet_upgrade_on_a_throttling_apiserver_gets_no_429(
    small_apiserver: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = small_apiserver
    tag = uuid.uuid4().hex[:5]
    cluster, hubs = f"thr{tag}", [f"t{tag}{i}" for i in range(HUBS)]
    write_fleet(tmp_path / "fleet", cluster, hubs)
    monkeypatch.setenv("HUBFLEET_FLEET", str(tmp_path / "fleet"))
    assert cp.kubeconfig is not None and cp.deployer_kubeconfig is not None
    await ClusterAccess(  # as the deployer: the in-flight limits apply to it (not to admin)
        kubeconfig=cp.deployer_kubeconfig.read_text(),
        context="hubfleet-testenv",
        server=str(cp.server),
    ).save(cluster, overwrite=True)
    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    try:
        create_volumes(api, "thr-pv", HUBS + 2)
        installed = await deploy_fleet(selection=[cluster], gate="rollout", operator="t")
        assert [o.outcome for o in installed.outcomes] == [Outcome.deployed] * HUBS
        fleet_yaml = tmp_path / "fleet" / "fleet.yaml"
        fleet_yaml.write_text(fleet_yaml.read_text().replace("4.4.0", NEXT_VERSION))
        audit = cp.audit_log_path
        assert audit is not None
        start, before = audit.stat().st_size, count_429(cp)

        result = await upgrade_fleet(selection=[cluster], gate="rollout", operator="t")

        assert [o.outcome for o in result.outcomes] == [Outcome.deployed] * HUBS
        throttled = count_429(cp) - before
        with audit.open("rb") as f:
            f.seek(start)
            events = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        helm = [e for e in events if e.get("userAgent", "").startswith("Helm/")]
        ours = [e for e in events if e.get("userAgent", "").startswith("hubfleet")]
        refused = sorted(
            {
                f"{e['userAgent'].split('/')[0]} ({e['userAgent'].rsplit('/', 1)[-1]})"
                for e in events
                if e["responseStatus"]["code"] == 429
            }
        )
        # helm and hubfleet's own client did the work, through this API server.
        assert len(helm) > 50 * HUBS and ours
        mine = [e for e in helm + ours if e["responseStatus"]["code"] == 429]
        # hubfleet's requests (helm's and its own client's) were never refused. The
        # controller-manager's reactions to the replaced pods may be (it runs at 500 qps
        # here): reported, not asserted; benchmarks/bench_apiserver.py counts them.
        assert not mine, f"{len(mine)} of hubfleet's requests answered 429 ({throttled} in all)"
        print(f"429s in the upgrade: {throttled} in all, clients: {refused}")

        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        for hub in hubs:
            deps = apps.list_namespaced_deployment(hub, label_selector=f"release={hub}").items
            assert {d.metadata.name for d in deps} >= {"hub", "proxy"}
            assert {d.metadata.labels["chart"] for d in deps} == {f"jupyterhub-{NEXT_VERSION}"}
            assert all(d.status.ready_replicas == d.spec.replicas for d in deps), hub
            pods = core.list_namespaced_pod(hub, label_selector=f"release={hub}").items
            assert pods and all(
                any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
                for p in pods
                if not p.metadata.deletion_timestamp
            ), hub
    finally:
        api.close()
