"""teardown_hub of Kubernetes hubs on the real control plane with the real helm binary.

Real: Prefect server, helm 3, kube-apiserver + controllers + scheduler, kwok (pods Ready),
the PersistentVolume controller binding home claims to volumes and releasing them when the
namespace goes, the `hubfleet` command.
Not real, and said where it matters: kwok pods serve no HTTP, so the ops token cannot be
revoked through the hub here (the teardown reports the hub unreachable; revocation on a
running hub is tests/node/test_teardown_on_node.py); the ops token block is one the test
stores, as a deploy with the health gate would. The test volumes are hostPath volumes
with no deleter (the controller-manager runs without `--enable-hostpath-provisioner`), so
a dropped one ends `Failed` instead of gone: the teardown must say so.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import flow
from pydantic import SecretStr
from waiting import wait_for

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import deploy_hub
from flows.teardown_hub import teardown_hub
from hubfleet.loader import load_fleet
from tasks.helm import Helm
from tasks.hub_credentials import load_ops_token
from tasks.kube_archive import (
    ARCHIVED_AT,
    ARCHIVED_CLAIM,
    ARCHIVED_CLUSTER,
    ARCHIVED_HUB,
    ARCHIVED_USER,
)
from tasks.locks import LockTimeout, ensure_concurrency_limits, hub_lock
from testenv import history

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]

HUBFLEET = str(Path(sys.executable).parent / "hubfleet")


def first_hubs(fleet: Path) -> tuple[str, list[str]]:
    cluster = sorted(p.name for p in (fleet / "clusters").iterdir())[0]
    text = (fleet / "clusters" / cluster / "cluster.yaml").read_text()
    return cluster, [ln.split(": ")[1] for ln in text.splitlines() if "- name" in ln]


def add_home(kube_api: Any, namespace: str, user: str, reclaim: str) -> str:
    """A user's home as KubeSpawner makes it (claim name and labels), bound to a volume of
    its own with `reclaim` (Delete: what dynamic provisioning gives). Returns the PV name."""
    core = client.CoreV1Api(kube_api)
    pv = f"home-{namespace}-{user}"
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteOnce"],
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/{pv}"),
                persistent_volume_reclaim_policy=reclaim,
                storage_class_name="",
            ),
        )
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(
                name=f"claim-{user}",
                labels={"component": "singleuser-storage", "hub.jupyter.org/username": user},
            ),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name="",
                volume_name=pv,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    wait_for(
        f"claim-{user} bound to {pv}",
        lambda: (
            core.read_namespaced_persistent_volume_claim(f"claim-{user}", namespace).status.phase
            == "Bound"
        ),
        60,
    )
    return pv


def volume(kube_api: Any, name: str) -> Any | None:
    try:
        return client.CoreV1Api(kube_api).read_persistent_volume(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def released(kube_api: Any, name: str) -> Any | None:
    v = volume(kube_api, name)
    return v if v is not None and v.status.phase == "Released" else None


def namespace_exists(kube_api: Any, name: str) -> bool:
    try:
        client.CoreV1Api(kube_api).read_namespace(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def release(kube: Any, helm: Path, hub: str) -> dict[str, Any] | None:
    h = Helm(kube.kubeconfig, "hubfleet-testenv", binary=helm)
    try:
        return h.status(hub, hub)
    finally:
        h.close()


async def store_ops_token(cluster: str, hub: str) -> str:
    """The block a deploy with the health gate stores (kwok hubs never answer to mint one)."""
    token = secrets.token_hex(24)
    await HubOpsToken(
        hub=f"{cluster}/{hub}",
        url=f"https://{hub}.{cluster}.hubfleet.test",
        token_id="a1",
        token=SecretStr(token),
        created_at=datetime.now(UTC),
    ).asave(HubOpsToken.block_name(cluster, hub), overwrite=True)
    return token


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `hubfleet` command (the test's Prefect server and fleet from the env)."""
    return subprocess.run([HUBFLEET, *args], capture_output=True, text=True, timeout=300)


async def test_teardown_keeps_homes_as_retained_labelled_volumes(
    kube_fleet: Path, kube, kube_api, helm
) -> None:
    cluster, hubs = first_hubs(kube_fleet)
    hub = hubs[1]
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout", operator="alice")
    pvs = {user: add_home(kube_api, hub, user, "Delete") for user in ("alice", "bob")}
    token = await store_ops_token(cluster, hub)

    # Dry run: says what it would do, changes nothing (volumes, release, namespace, block).
    dry = await teardown_hub(cluster, hub, dry_run=True, operator="alice")
    assert dry.dry_run, dry
    would = dry.would
    assert f"archive 2 home volume(s) (claim-alice ({pvs['alice']}), claim-bob" in would
    assert f"helm uninstall {hub} -n {hub}" in would and f"delete namespace {hub}" in would
    for pv in pvs.values():
        v = volume(kube_api, pv)
        assert v.spec.persistent_volume_reclaim_policy == "Delete" and not v.metadata.labels
    assert release(kube, helm, hub) is not None and namespace_exists(kube_api, hub)
    assert await load_ops_token(cluster, hub) is not None

    started = time.monotonic()
    done = await teardown_hub(cluster, hub, operator="alice")
    print(f"teardown of a kwok hub with 2 homes: {time.monotonic() - started:.1f}s")
    assert done.archived_volumes == sorted(pvs.values()), done
    assert done.homes == ["claim-alice", "claim-bob"] and done.dropped_volumes == []
    assert "unreachable" in done.revoked, done.revoked
    # The hub is gone: release, namespace (waited for), ops token block.
    assert release(kube, helm, hub) is None and not namespace_exists(kube_api, hub)
    assert await load_ops_token(cluster, hub) is None
    # The homes are kept: Retain, labelled whose they were, released by their claim.
    for user, pv in pvs.items():
        v = wait_for(f"{pv} released", lambda pv=pv: released(kube_api, pv), 60)
        assert v.spec.persistent_volume_reclaim_policy == "Retain"
        assert v.metadata.labels == {
            ARCHIVED_HUB: hub,
            ARCHIVED_CLUSTER: cluster,
            ARCHIVED_USER: user,
        }
        assert v.metadata.annotations[ARCHIVED_CLAIM] == f"{hub}/claim-{user}"
        assert datetime.fromisoformat(v.metadata.annotations[ARCHIVED_AT]) <= datetime.now(UTC)
    found = client.CoreV1Api(kube_api).list_persistent_volume(
        label_selector=f"{ARCHIVED_HUB}={hub}"
    )
    assert sorted(v.metadata.name for v in found.items) == sorted(pvs.values())
    # The run is tagged like every hubfleet run; the token is in no log or artifact.
    logs, artifacts = await history.logs(1000), await history.artifacts(limit=500)
    assert all(token not in log.message for log in logs)
    assert all(token not in json.dumps(a.data) for a in artifacts)
    # Again: nothing left to remove, still fine (a re-run after a crash).
    again = await teardown_hub(cluster, hub, operator="alice")
    assert again.homes == [] and again.archived_volumes == []


async def test_cli_delete_data_drops_homes_and_a_held_lock_stops_it(
    kube_fleet: Path, kube, kube_api, helm
) -> None:
    cluster, hubs = first_hubs(kube_fleet)
    hub = hubs[2]
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout", operator="bob")
    # A statically provisioned home (Retain): --delete-data must drop it all the same.
    pv = add_home(kube_api, hub, "carol", "Retain")
    await ensure_concurrency_limits(load_fleet(kube_fleet))

    # Someone else holds the hub: the teardown waits --lock-wait, then stops plainly,
    # naming the holder, having changed nothing.
    holding, release_it = asyncio.Event(), asyncio.Event()

    @flow(name="hold_hub_lock", flow_run_name="hold_hub_lock {hub}")
    async def hold(hub: str) -> None:
        async with hub_lock(cluster, hub):
            holding.set()
            await release_it.wait()

    holder = asyncio.create_task(hold(hub))
    await asyncio.wait_for(holding.wait(), 60)
    try:
        with pytest.raises(LockTimeout, match=rf"hub {cluster}/{hub} is busy: held by run"):
            await teardown_hub(cluster, hub, keep_data=False, lock_timeout=1, operator="bob")
        busy = await asyncio.to_thread(
            run_cli, "teardown", cluster, hub, "--delete-data", "--lock-wait", "1"
        )
    finally:
        release_it.set()
        await holder
    assert busy.returncode == 2, busy.stderr
    assert f"hub {cluster}/{hub} is busy: held by run 'hold_hub_lock {hub}'" in busy.stderr
    assert "Nothing was changed" in busy.stderr and "Traceback" not in busy.stderr
    assert release(kube, helm, hub) is not None and namespace_exists(kube_api, hub)
    assert volume(kube_api, pv).spec.persistent_volume_reclaim_policy == "Retain"

    # Bad input is refused plainly: an unknown hub, a lock wait out of bounds.
    unknown = run_cli("teardown", cluster, "nosuchhub", "--dry-run")
    assert unknown.returncode == 2 and f"cluster '{cluster}' has no hub 'nosuchhub'" in (
        unknown.stderr
    ), unknown.stderr
    bad_wait = run_cli("teardown", cluster, hub, "--lock-wait", "0")
    assert bad_wait.returncode == 2 and "--lock-wait" in bad_wait.stderr, bad_wait.stderr

    # Dry run from the CLI: says it would drop the home; changes nothing.
    dry = run_cli("teardown", cluster, hub, "--delete-data", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "drop 1 home volume(s) (claim-carol" in dry.stdout.replace("\n", " "), dry.stdout
    assert volume(kube_api, pv).spec.persistent_volume_reclaim_policy == "Retain"

    started = time.monotonic()
    gone = run_cli("teardown", cluster, hub, "--delete-data", "--operator", "bob")
    print(f"CLI teardown --delete-data of a kwok hub: {time.monotonic() - started:.1f}s")
    assert gone.returncode == 0, gone.stderr
    assert release(kube, helm, hub) is None and not namespace_exists(kube_api, hub)
    # The home volume was set to Delete and released; kwok's hostPath volumes have no
    # deleter, so it ends Failed, and the teardown says it was left behind, with why.
    v = volume(kube_api, pv)
    assert v is None or v.spec.persistent_volume_reclaim_policy == "Delete"
    assert v is None or ARCHIVED_HUB not in (v.metadata.labels or {})
    if v is not None:
        assert "volumes_left" in gone.stdout and pv in gone.stdout, gone.stdout
