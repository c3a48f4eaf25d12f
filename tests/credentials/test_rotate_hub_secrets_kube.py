"""Rotating a Kubernetes hub's secrets (proxy auth token, cookie secret), only on request.

Real: Prefect server, kube-apiserver + etcd + controller-manager + scheduler, kwok (pods
Ready), the hub chart installed and upgraded by the real helm binary, the Secret and the
Deployments read and written through the API server.

Not real, and said where: kwok pods run no processes, so "the proxy refuses the old token"
and "the hub refuses a cookie signed with the old secret" cannot be asked of a running
proxy/hub here. What is checked instead is what makes it so on a real cluster: the old
values are in no Secret, and every live hub/proxy pod belongs to the new revision (its
pod-template annotation names the new secret version). The cookie test against a real
running JupyterHub is in test_rotate_hub_secrets_local.py. The fault is injected by
wrapping the adapter's verify (everything else real).
"""

from __future__ import annotations

import base64
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prefect.blocks.system import Secret

from blocks.cluster_access import ClusterAccess
from flows.deploy_hub import deploy_hub
from flows.rotate_credentials import RotationsFailed, rotate_credentials
from hubfleet.cli.credentials import inventory_table, read_inventory
from hubfleet.credentials import CredentialKind, Status
from hubfleet.errors import HubfleetError
from hubfleet.loader import load_fleet
from tasks.hub_secrets import (
    COOKIE_SECRET,
    PROXY_TOKEN,
    VERSION,
    KubeHubSecretRotator,
    version_of,
)
from tasks.rotation import CredentialRefused, Issued
from testenv import history
from testenv.volumes import create_volumes

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="session")
def hub_pvs(kube_api: client.ApiClient) -> None:
    """Volumes for the hubs' database PVCs (the test cluster has no provisioner)."""
    create_volumes(kube_api, "hubfleet-cred-pv", 8)


@pytest.fixture
async def kube_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kube: Any, hub_pvs: None
) -> AsyncIterator[dict[str, Any]]:
    """A fleet with one kubeconfig cluster (the test control plane) holding one hub, and
    one cluster whose API server cannot be reached."""
    tag = uuid.uuid4().hex[:5]
    cluster, hub, gone = f"k{tag}", f"h{tag}", f"gone{tag}"
    root = tmp_path / "fleet"
    (root / "clusters" / cluster).mkdir(parents=True)
    (root / "clusters" / gone).mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: cred-fleet\nchart_version: 4.4.0\n")
    for name, hub_name in ((cluster, hub), (gone, f"x{tag}")):
        (root / "clusters" / name / "cluster.yaml").write_text(
            textwrap.dedent(
                f"""\
                name: {name}
                provider: kubeconfig
                kubeconfig: {{context: hubfleet-testenv}}
                hubs:
                  - name: {hub_name}
                    domain: {hub_name}.{name}.hubfleet.test
                    tier: prod
                    kind: standing
                    values: [{hub_name}.values.yaml]
                """
            )
        )
        (root / "clusters" / name / f"{hub_name}.values.yaml").write_text("{}\n")
        # A prod hub needs a login (hubfleet.auth): nobody logs in here (null).
        (root / "clusters" / name / "cluster.values.yaml").write_text(
            "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
        )
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    admin = kube.kubeconfig.read_text()
    await ClusterAccess(kubeconfig=admin, context="hubfleet-testenv", server=kube.server).asave(
        cluster, overwrite=True
    )
    unreachable = yaml.safe_load(admin)
    for entry in unreachable["clusters"]:
        entry["cluster"]["server"] = "https://127.0.0.1:9"
    await ClusterAccess(
        kubeconfig=yaml.safe_dump(unreachable),
        context="hubfleet-testenv",
        server="https://127.0.0.1:9",
    ).asave(gone, overwrite=True)
    deployed = await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    assert deployed.action == "install"
    yield {"root": root, "cluster": cluster, "hub": hub, "gone": gone}


def secret_data(kube_api: client.ApiClient, hub: str) -> dict[str, str]:
    data = client.CoreV1Api(kube_api).read_namespaced_secret("hub", hub).data
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def secret_annotations(kube_api: client.ApiClient, hub: str) -> dict[str, str]:
    secret = client.CoreV1Api(kube_api).read_namespaced_secret("hub", hub)
    return dict(secret.metadata.annotations or {})


def running_versions(kube_api: client.ApiClient, hub: str) -> dict[str, set[str]]:
    """component -> secret versions its live pods run ('none' before any rotation)."""
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(hub, label_selector=f"release={hub}")
    found: dict[str, set[str]] = {}
    for pod in pods.items:
        if pod.metadata.deletion_timestamp:
            continue
        component = pod.metadata.labels.get("component")
        if component not in ("hub", "proxy"):
            continue
        found.setdefault(component, set()).add(
            (pod.metadata.annotations or {}).get(VERSION, "none")
        )
    return found


async def artifact_text(key: str) -> str:
    return "\n".join(str(a.data) for a in await history.artifacts(key=key))


async def test_inventory_weekly_run_skips_and_unreachable_cluster_is_unknown(
    kube_hub: dict[str, Any], kube_api: client.ApiClient, secret_ledger: set[str]
) -> None:
    cluster, hub, gone = kube_hub["cluster"], kube_hub["hub"], kube_hub["gone"]
    before = secret_data(kube_api, hub)
    secret_ledger.update(before.values())

    # The inventory lists the hub's proxy token and cookie secret by identity, with an age.
    records = await read_inventory(load_fleet(kube_hub["root"]))
    mine = [r for r in records if r.kind is CredentialKind.hub_secret and r.cluster == cluster]
    assert [r.ident for r in mine] == [  # z2jh's Secret holds both, generated at install
        "hub:hub.config.ConfigurableHTTPProxy.auth_token",
        "hub:hub.config.JupyterHub.cookie_secret",
    ]
    now = datetime.now(UTC)
    assert all(r.created_at and (now - r.created_at).total_seconds() < 600 for r in mine)
    assert all(
        r.status(now, load_fleet(kube_hub["root"]).settings.credentials.warn_within) is Status.ok
        for r in mine
    )
    assert f"secret:{hub}/hub" in mine[0].consumed_by
    # An unreachable cluster is a record with status unknown and a note, not a crash.
    [lost] = [r for r in records if r.kind is CredentialKind.hub_secret and r.cluster == gone]
    assert lost.status(now, timedelta(days=7)) is Status.unknown
    assert "not reachable" in lost.note
    # No value is in any record.
    assert not [v for v in before.values() for r in records if v in repr(r)]
    # The CLI table marks hub secrets "rotate on request".
    table, _ = inventory_table(
        records, now, load_fleet(kube_hub["root"]).settings.credentials.warn_within
    )
    rotation_column = next(c for c in table.columns if c.header == "rotation")
    kinds_column = next(c for c in table.columns if c.header == "kind")
    modes = dict(zip(kinds_column._cells, rotation_column._cells, strict=True))
    assert modes["hub-secret"] == "rotate on request"

    # The weekly run (scope all, even with everything due) rotates no hub secret, and says
    # they need an explicit request.
    weekly = await rotate_credentials(scope="all", max_age=timedelta(0))
    assert weekly.rotated == [] and weekly.hub_secrets == []
    plan = await artifact_text("rotation-plan")
    assert "rotate on request only (scope 'hub-secret:<cluster>/<hub>'" in plan
    assert "every user must log in again" in plan
    assert secret_data(kube_api, hub) == before


async def test_rotation_rolls_hub_and_proxy_and_helm_upgrade_keeps_values(
    kube_hub: dict[str, Any], kube_api: client.ApiClient, secret_ledger: set[str]
) -> None:
    cluster, hub = kube_hub["cluster"], kube_hub["hub"]
    before = secret_data(kube_api, hub)
    secret_ledger.update(before.values())
    scope = f"hub-secret:{cluster}/{hub}"

    # Dry run: says what would happen, loudly, and changes nothing.
    dry = await rotate_credentials(scope=scope, dry_run=True)
    assert dry.would_rotate == [f"hub-secret {cluster}/{hub}"]
    assert dry.warning == (
        f"rotating hub secrets of {cluster}/{hub}: the hub is redeployed and every user "
        "must log in again"
    )
    assert "**WARNING: rotating hub secrets of" in await artifact_text("rotation-plan")
    assert secret_data(kube_api, hub) == before

    result = await rotate_credentials(scope=scope, operator="erin")
    [done] = result.rotated  # the token and the cookie secret: one rotation, one redeploy
    assert done.kind == "hub-secret" and done.owner == f"{cluster}/{hub}"
    assert done.switched == [f"deployment:{hub}/hub", f"deployment:{hub}/proxy"]
    after = secret_data(kube_api, hub)
    secret_ledger.update(after.values())
    # The Secret holds new values; the old proxy token is gone from it; the rest is kept.
    token, cookie = PROXY_TOKEN, COOKIE_SECRET
    assert after[token] != before[token] and after[cookie] != before[cookie]
    assert len(after[cookie]) == 64 and int(after[cookie], 16) >= 0
    assert after["hub.config.CryptKeeper.keys"] == before["hub.config.CryptKeeper.keys"]
    assert before[token] not in after.values()
    rotated_at = datetime.fromisoformat(secret_annotations(kube_api, hub)["hubfleet.io/rotated-at"])
    assert (datetime.now(UTC) - rotated_at).total_seconds() < 600
    # Hub and proxy were rolled: every live pod runs the new version (none the old one).
    version = done.new.removeprefix("hub-secret@")
    assert running_versions(kube_api, hub) == {"hub": {version}, "proxy": {version}}
    apps = client.AppsV1Api(kube_api)
    for name in ("hub", "proxy"):
        dep = apps.read_namespaced_deployment(name, hub)
        assert dep.spec.template.metadata.annotations[VERSION] == version
        assert dep.status.ready_replicas == dep.spec.replicas
    # The hub reads the cookie secret from the Secret it mounts (z2jh's get_secret_value),
    # the proxy its token from the Secret through its environment.
    hub_spec = apps.read_namespaced_deployment("hub", hub).spec.template.spec
    assert "hub" in {v.secret.secret_name for v in hub_spec.volumes if v.secret}
    proxy_env = {
        e.name: e
        for e in apps.read_namespaced_deployment("proxy", hub).spec.template.spec.containers[0].env
    }
    assert proxy_env["CONFIGPROXY_AUTH_TOKEN"].value_from.secret_key_ref.key == PROXY_TOKEN
    # The inventory now shows both in the Secret, aged from the rotation.
    records = await read_inventory(load_fleet(kube_hub["root"]))
    mine = [r for r in records if r.kind is CredentialKind.hub_secret and r.hub == hub]
    assert [r.ident for r in mine] == [f"hub:{PROXY_TOKEN}", f"hub:{COOKIE_SECRET}"]
    assert all(r.last_rotated == rotated_at for r in mine)

    # A later helm upgrade of the hub keeps the rotated values (the chart's lookup).
    values = kube_hub["root"] / "clusters" / cluster / f"{hub}.values.yaml"
    values.write_text("jupyterhub:\n  hub:\n    extraEnv: {ROTATION_TEST: '1'}\n")
    upgraded = await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    assert upgraded.action == "upgrade"
    kept = ("hub.config.CryptKeeper.keys", PROXY_TOKEN, COOKIE_SECRET)  # values.yaml changed
    assert {k: secret_data(kube_api, hub)[k] for k in kept} == {k: after[k] for k in kept}


async def test_failure_after_create_restores_the_old_secret_and_says_so(
    kube_hub: dict[str, Any], kube_api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: verification of the new values fails (verify is wrapped to refuse
    anything but the old version); the store, the rollout and the restore are real."""
    cluster, hub = kube_hub["cluster"], kube_hub["hub"]
    before = secret_data(kube_api, hub)
    before_notes = secret_annotations(kube_api, hub)
    real_verify = KubeHubSecretRotator.verify
    old_ident = [f"hub-secret@{version_of(before)}"]

    async def verify_refusing_new(self: KubeHubSecretRotator, credential: Issued) -> str:
        if credential.ident != old_ident[0]:
            raise CredentialRefused(f"injected fault: refusing {credential.ident}")
        return await real_verify(self, credential)

    monkeypatch.setattr(KubeHubSecretRotator, "verify", verify_refusing_new)
    with pytest.raises(RotationsFailed) as failed:
        await rotate_credentials(scope=f"hub-secret:{cluster}/{hub}")
    message = str(failed.value)
    assert "injected fault" in message
    assert f"restored {old_ident[0]} in the hub's Kubernetes Secret" in message
    assert f"checked: the old credential {old_ident[0]} works" in message

    # The Secret is exactly as before (no cookie secret key added, no rotated-at), and the
    # hub and proxy were rolled back onto it.
    assert secret_data(kube_api, hub) == before
    assert secret_annotations(kube_api, hub) == before_notes
    old_version = old_ident[0].removeprefix("hub-secret@")
    assert running_versions(kube_api, hub) == {"hub": {old_version}, "proxy": {old_version}}
    # The run's artifact says what was rolled back.
    [artifact] = await history.artifacts(key=f"rotation-hub-secret-{cluster}-{hub}", limit=1)
    assert "FAILED" in str(artifact.data) and f"restored {old_ident[0]}" in str(artifact.data)


async def test_failure_half_way_through_the_restarts_puts_the_old_secret_back(
    kube_hub: dict[str, Any], kube_api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the proxy 'never' becomes Ready on the new values (the wait for it
    is wrapped to fail for any version but the old one), after the Secret was written and
    the proxy restarted: the store itself puts the old Secret back and rolls both
    Deployments onto it before the error goes up."""
    cluster, hub = kube_hub["cluster"], kube_hub["hub"]
    before = secret_data(kube_api, hub)
    before_notes = secret_annotations(kube_api, hub)
    old_version = version_of(before)
    real_wait = KubeHubSecretRotator._wait_rolled

    def wait_failing_new(self: KubeHubSecretRotator, api: Any, name: str, version: str) -> None:
        if version != old_version:
            raise HubfleetError(f"injected fault: {name} did not become Ready")
        real_wait(self, api, name, version)

    monkeypatch.setattr(KubeHubSecretRotator, "_wait_rolled", wait_failing_new)
    with pytest.raises(RotationsFailed) as failed:
        await rotate_credentials(scope=f"hub-secret:{cluster}/{hub}")
    message = str(failed.value)
    assert "injected fault: proxy did not become Ready" in message
    assert (
        f"the Secret {hub}/hub was put back to hub-secret@{old_version} and the proxy and "
        "hub rolled back to it" in message
    )
    assert f"checked: the old credential hub-secret@{old_version} works" in message
    assert secret_data(kube_api, hub) == before
    assert secret_annotations(kube_api, hub) == before_notes
    assert running_versions(kube_api, hub) == {"hub": {old_version}, "proxy": {old_version}}


async def test_values_that_pin_a_hub_secret_refuse_rotation(
    kube_hub: dict[str, Any], kube_api: client.ApiClient, secret_ledger: set[str]
) -> None:
    cluster, hub = kube_hub["cluster"], kube_hub["hub"]
    pinned = uuid.uuid4().hex + uuid.uuid4().hex
    secret_ledger.add(pinned)
    await Secret(value={"jupyterhub": {"hub": {"cookieSecret": pinned}}}).save(
        f"hub-values-{cluster}-{hub}", overwrite=True
    )
    await deploy_hub(cluster=cluster, hub=hub, gate="rollout")
    before = secret_data(kube_api, hub)
    assert before[COOKIE_SECRET] == pinned
    secret_ledger.update(before.values())

    with pytest.raises(RotationsFailed) as refused:
        await rotate_credentials(scope=f"hub-secret:{cluster}/{hub}")
    message = str(refused.value)
    assert "its values set jupyterhub.hub.cookieSecret explicitly" in message
    assert f"Secret block 'hub-values-{cluster}-{hub}'" in message
    assert "Nothing was changed" in message
    assert pinned not in message
    assert secret_data(kube_api, hub) == before
    records = await read_inventory(load_fleet(kube_hub["root"]))
    [cookie] = [r for r in records if r.ident == f"hub:{COOKIE_SECRET}"]
    assert "pinned by values (jupyterhub.hub.cookieSecret): rotation refused" in cookie.note
