"""Proof that the local control plane is a real Kubernetes API: objects are stored,
controllers reconcile them, the scheduler honours labels and taints, kwok makes pods
Ready, and RBAC decides with real service-account tokens."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from waiting import wait_for

pytestmark = pytest.mark.kube


def _deployment(name: str, replicas: int, node_purpose: str = "core") -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    node_selector={"hub.jupyter.org/node-purpose": node_purpose},
                    containers=[
                        client.V1Container(
                            name="web",
                            image="registry.k8s.io/pause:3.10",
                            resources=client.V1ResourceRequirements(
                                requests={"cpu": "100m", "memory": "64Mi"}
                            ),
                        )
                    ],
                ),
            ),
        ),
    )


def test_fake_node_pools_look_like_cloud_pools(kube_api):
    nodes = client.CoreV1Api(kube_api).list_node(label_selector="type=kwok").items
    by_purpose: dict[str, list] = {}
    for n in nodes:
        by_purpose.setdefault(n.metadata.labels["hub.jupyter.org/node-purpose"], []).append(n)
    assert set(by_purpose) == {"core", "user"}
    for n in nodes:
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions), (
            n.metadata.name
        )
        assert n.status.allocatable["cpu"] and n.status.allocatable["memory"]
    assert all(
        any(t.key == "hub.jupyter.org/dedicated" for t in (n.spec.taints or []))
        for n in by_purpose["user"]
    )


def test_deployment_gets_ready_pods_through_kwok(kube_api, kube_namespace):
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(kube_namespace, _deployment("web", replicas=3))

    dep = wait_for(
        "3 ready replicas",
        lambda: (
            d
            if (d := apps.read_namespaced_deployment("web", kube_namespace)).status.ready_replicas
            == 3
            else None
        ),
        timeout=60,
    )
    assert dep.status.available_replicas == 3

    pods = core.list_namespaced_pod(kube_namespace, label_selector="app=web").items
    assert len(pods) == 3
    for p in pods:
        assert p.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
        # The scheduler placed it by the nodeSelector: a core-pool node.
        assert p.spec.node_name.startswith("kwok-core-"), p.spec.node_name


def test_scheduler_respects_user_pool_taint(kube_api, kube_namespace):
    """A pod for the user pool without the toleration stays Pending; with it, it runs."""
    core = client.CoreV1Api(kube_api)

    def pod(name: str, tolerate: bool) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                node_selector={"hub.jupyter.org/node-purpose": "user"},
                tolerations=[
                    client.V1Toleration(
                        key="hub.jupyter.org/dedicated",
                        operator="Equal",
                        value="user",
                        effect="NoSchedule",
                    )
                ]
                if tolerate
                else None,
                containers=[
                    client.V1Container(name="notebook", image="quay.io/jupyter/base-notebook")
                ],
            ),
        )

    core.create_namespaced_pod(kube_namespace, pod("tolerates", True))
    core.create_namespaced_pod(kube_namespace, pod("intolerant", False))

    ready = wait_for(
        "tolerating pod Running",
        lambda: (
            p
            if (p := core.read_namespaced_pod("tolerates", kube_namespace)).status.phase
            == "Running"
            else None
        ),
        timeout=60,
    )
    assert ready.spec.node_name.startswith("kwok-user-")

    def unschedulable():
        p = core.read_namespaced_pod("intolerant", kube_namespace)
        conds = {c.type: c for c in (p.status.conditions or [])}
        c = conds.get("PodScheduled")
        return p if c is not None and c.status == "False" and c.reason == "Unschedulable" else None

    p = wait_for("intolerant pod marked Unschedulable", unschedulable, timeout=60)
    assert p.status.phase == "Pending" and not p.spec.node_name


def test_secret_create_patch_read_back(kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        kube_namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hub-token"),
            string_data={"token": "first", "user": "ops"},
        ),
    )

    core.patch_namespaced_secret(
        "hub-token",
        kube_namespace,
        {
            "data": {"token": base64.b64encode(b"second").decode()},
            "metadata": {"labels": {"rotated": "yes"}},
        },
    )

    s = core.read_namespaced_secret("hub-token", kube_namespace)
    decoded = {k: base64.b64decode(v).decode() for k, v in s.data.items()}
    assert decoded == {"token": "second", "user": "ops"}
    assert s.metadata.labels == {"rotated": "yes"}
    assert int(s.metadata.resource_version) > 0


def test_rbac_denies_restricted_service_account(kube, kube_api, kube_namespace):
    """A real token for a service account that may only read pods: reads pods, nothing else."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        kube_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="restricted"))
    )
    rbac.create_namespaced_role(
        kube_namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="restricted-reads-pods"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="ServiceAccount", name="restricted", namespace=kube_namespace
                )
            ],
        ),
    )
    core.create_namespaced_secret(
        kube_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="not-for-you"), string_data={"k": "v"}),
    )

    # A bound token from the TokenRequest API, signed with the control plane's SA key.
    token = core.create_namespaced_service_account_token(
        "restricted",
        kube_namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    cfg = client.Configuration()
    cfg.host = kube.server
    cfg.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as sa_api:
        sa = client.CoreV1Api(sa_api)
        assert sa.list_namespaced_pod(kube_namespace).items == []  # allowed

        denied = [
            lambda: sa.list_namespaced_secret(kube_namespace),
            lambda: sa.read_namespaced_secret("not-for-you", kube_namespace),
            lambda: sa.create_namespaced_pod(
                kube_namespace,
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name="x"),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="c", image="busybox")]
                    ),
                ),
            ),
            lambda: sa.list_namespaced_pod("default"),
            lambda: sa.list_node(),
            lambda: client.RbacAuthorizationV1Api(sa_api).create_namespaced_role_binding(
                kube_namespace,
                client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name="escalate"),
                    role_ref=client.V1RoleRef(
                        api_group="rbac.authorization.k8s.io",
                        kind="ClusterRole",
                        name="cluster-admin",
                    ),
                    subjects=[
                        client.RbacV1Subject(
                            kind="ServiceAccount", name="restricted", namespace=kube_namespace
                        )
                    ],
                ),
            ),
        ]
        for i, call in enumerate(denied):
            with pytest.raises(ApiException) as exc:
                call()
            assert exc.value.status == 403, f"call {i}: {exc.value.status} {exc.value.reason}"

        # And the apiserver says who we are: the token authenticated as the service account.
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert (
            review.status.user_info.username == f"system:serviceaccount:{kube_namespace}:restricted"
        )

    # A garbage token is not authenticated at all.
    cfg.api_key = {"authorization": "not-a-token"}
    with client.ApiClient(cfg) as bad_api:
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(bad_api).list_namespaced_pod(kube_namespace)
        assert exc.value.status == 401
