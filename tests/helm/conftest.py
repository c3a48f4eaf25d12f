"""Fixtures for the Helm deploy tests: a temp fleet whose Kubernetes clusters are the
testenv control plane (kwok makes pods Ready), cluster access blocks, volumes for hub
databases, and an admission policy that stands in for a registry missing an image."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from blocks.cluster_access import ClusterAccess
from tasks.local_hub import LocalHub
from testenv.volumes import create_volumes

REPO = Path(__file__).resolve().parents[2]
#: The tag the admission policy treats as missing from the registry.
MISSING_TAG = "does-not-exist"


@pytest.fixture(autouse=True)
def stop_local_hubs(data_dir: Path) -> Iterator[None]:
    """Local hubs a test started are stopped by PID when it ends."""
    yield
    for state in (data_dir / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()


def write_fleet(root: Path, clusters: dict[str, list[tuple[str, str]]], provider: str) -> Path:
    """A fleet of `provider` clusters: {cluster: [(hub, tier), ...]}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fleet.yaml").write_text("name: test-fleet\nparallelism: 2\nchart_version: 4.4.0\n")
    for name, hubs in clusters.items():
        d = root / "clusters" / name
        d.mkdir(parents=True)
        section = (
            "kubeconfig: {context: hubfleet-testenv}" if provider == "kubeconfig" else ("local: {}")
        )
        body = f"name: {name}\nprovider: {provider}\n{section}\nhubs:\n"
        for hub, tier in hubs:
            body += textwrap.indent(
                f"- name: {hub}\n  domain: {hub}.{name}.hubfleet.test\n  tier: {tier}\n"
                f"  kind: standing\n  values: [{hub}.values.yaml]\n",
                "  ",
            )
            (d / f"{hub}.values.yaml").write_text("{}\n")
        # A prod hub needs a login (hubfleet.auth): nobody logs in to these (null).
        (d / "cluster.values.yaml").write_text(
            "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: 'null'}}}}\n"
        )
        (d / "cluster.yaml").write_text(body)
    return root


@pytest.fixture
def kube_fleet(tmp_path, monkeypatch, kube, prefect_server, pvs) -> Path:
    """Clusters a and b (both are the testenv control plane; hub names differ)."""
    tag = uuid.uuid4().hex[:5]
    root = write_fleet(
        tmp_path / "fleet",
        {
            f"a{tag}": [(f"as{tag}", "staging"), (f"ap{tag}", "prod"), (f"aq{tag}", "prod")],
            f"b{tag}": [(f"bs{tag}", "staging"), (f"bp{tag}", "prod")],
        },
        "kubeconfig",
    )
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    for cluster in (f"a{tag}", f"b{tag}"):
        ClusterAccess(
            kubeconfig=kube.kubeconfig.read_text(), context="hubfleet-testenv", server=kube.server
        ).save(cluster, overwrite=True)
    return root


@pytest.fixture(scope="session")
def pvs(kube_api) -> None:
    """Volumes for hub databases: the test cluster has no provisioner, so PVCs bind these."""
    create_volumes(kube_api, "hubfleet-test-pv", 60)


@pytest.fixture(scope="session")
def missing_image_policy(kube_api) -> str:
    """Pods with image tag `does-not-exist` are refused at admission.

    A stand-in for a registry without that tag: kwok has no kubelet, so a real
    ImagePullBackOff cannot happen here. The effect on the Deployment is the same as on a
    real cluster: the new revision never gets Ready pods, so `helm --wait` times out.
    """
    adm = client.AdmissionregistrationV1Api(kube_api)
    name = "hubfleet-test-missing-images"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.spec.containers.all(c, !c.image.endsWith(':"
                    + MISSING_TAG
                    + "'))",
                    "message": "image not found in registry (test stand-in for ImagePullBackOff)",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    for create, body in (
        (adm.create_validating_admission_policy, policy),
        (adm.create_validating_admission_policy_binding, binding),
    ):
        try:
            create(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    # The policy takes effect asynchronously: wait until a dry-run pod is refused.
    core = client.CoreV1Api(kube_api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image=f"x:{MISSING_TAG}")]),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.create_namespaced_pod("default", pod, dry_run="All")
        except ApiException as exc:
            if exc.status in (400, 403, 422) and "registry" in (exc.body or ""):
                return MISSING_TAG
            raise
        time.sleep(0.5)
    raise AssertionError("admission policy never took effect within 30s")
