"""Rotating the byo-kube cluster's deployer token on a real Kubernetes control plane.

Real kube-apiserver, etcd and controller-manager (its token controller fills the
service-account token Secrets); the deployer rotates its own token with its own rights.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr

from blocks.cluster_access import ClusterAccess
from blocks.deployer_credential import DeployerCredential
from flows.rotate_credentials import rotate_credentials
from hubfleet.credentials import CredentialKind

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.kube]

SA = "hubfleet-deployer"


def wait_for_token(core: client.CoreV1Api, namespace: str, name: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = core.read_namespaced_secret(name, namespace).data or {}
        if data.get("token"):
            return base64.b64decode(data["token"]).decode()
        time.sleep(0.2)
    raise AssertionError(f"token controller did not fill {namespace}/{name}")


def kubeconfig_for(kube: Any, token: str) -> dict[str, Any]:
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "uni", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [
            {"name": "university-prod", "context": {"cluster": "uni", "user": "deployer"}}
        ],
        "current-context": "university-prod",
    }


def whoami(kube: Any, token: str) -> str:
    with config.new_client_from_config_dict(kubeconfig_for(kube, token)) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
    return str(review.status.user_info.username)


@pytest.fixture
async def deployer(
    kube: Any, kube_api: client.ApiClient, kube_namespace: str, secret_ledger: set[str]
) -> AsyncIterator[dict[str, Any]]:
    """A deployer SA with a token Secret, rights on secrets in its namespace, a consumer
    Secret holding its token, and the byo-kube blocks pointing at it."""
    ns = kube_namespace
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata={"name": SA}))
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata={"name": "token-rotation"},
            rules=[
                client.V1PolicyRule(
                    api_groups=[""],
                    resources=["secrets"],
                    verbs=["create", "get", "delete", "patch"],
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata={"name": "token-rotation"},
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="token-rotation"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=SA, namespace=ns)],
        ),
    )
    first = f"{SA}-token-initial"
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata={"name": first, "annotations": {"kubernetes.io/service-account.name": SA}},
            type="kubernetes.io/service-account-token",
        ),
    )
    token = wait_for_token(core, ns, first)
    secret_ledger.add(token)
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata={"name": "deployer-token"},
            data={"token": base64.b64encode(token.encode()).decode()},
        ),
    )
    await ClusterAccess(
        kubeconfig=SecretStr(yaml.safe_dump(kubeconfig_for(kube, token))),
        context="university-prod",
        server=kube.server,
    ).asave("byo-kube", overwrite=True)
    await DeployerCredential(
        cluster="byo-kube",
        kind=CredentialKind.kube_service_account_token,
        principal=f"{ns}/{SA}",
        credential_id=first,
        secret_block="byo-kube",
        created_at=datetime.now(UTC) - timedelta(days=1),
        consumed_by=[f"secret:{ns}/deployer-token"],
    ).asave("byo-kube-deployer", overwrite=True)
    yield {"ns": ns, "token": token, "secret": first}


async def test_rotation_updates_secret_and_old_token_is_refused(
    kube: Any, kube_api: client.ApiClient, deployer: dict[str, Any]
) -> None:
    ns = deployer["ns"]
    assert whoami(kube, deployer["token"]) == f"system:serviceaccount:{ns}:{SA}"

    result = await rotate_credentials(scope="cluster:byo-kube", max_age=timedelta(0))
    [done] = result.rotated
    assert done.old == deployer["secret"] and done.switched == [f"secret:{ns}/deployer-token"]

    # The consumer Secret and the ClusterAccess block hold the new token, which works.
    core = client.CoreV1Api(kube_api)
    data = core.read_namespaced_secret("deployer-token", ns).data
    new_token = base64.b64decode(data["token"]).decode()
    assert new_token != deployer["token"]
    assert whoami(kube, new_token) == f"system:serviceaccount:{ns}:{SA}"
    access = await ClusterAccess.aload("byo-kube")
    stored = yaml.safe_load(access.kubeconfig.get_secret_value())
    assert stored["users"][0]["user"] == {"token": new_token}

    # A client with the old token is refused by the real API server; its Secret is gone.
    with pytest.raises(ApiException) as refused:
        whoami(kube, deployer["token"])
    assert refused.value.status == 401
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_secret(deployer["secret"], ns)
    assert gone.value.status == 404
    record = await DeployerCredential.aload("byo-kube-deployer")
    assert record.credential_id == done.new and record.last_rotated is not None
