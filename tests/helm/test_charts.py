"""helm/hub and helm/support with the real helm binary: strict lint, rendering with every
option set, and the schema refusing a typo (with the key named)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubfleet.values import ValuesInvalid
from tasks.helm import Helm, HelmError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline_helm(helm) -> Helm:
    h = Helm(kubeconfig=None, binary=helm)
    yield h
    h.close()


@pytest.mark.parametrize("chart", ["hub", "support"])
def test_lint_strict_and_template_with_every_option(offline_helm: Helm, chart: str) -> None:
    chart_dir = REPO / "helm" / chart
    all_options = chart_dir / "ci" / "all-options.values.yaml"
    assert "0 chart(s) failed" in offline_helm.lint(chart_dir, [all_options])
    assert "0 chart(s) failed" in offline_helm.lint(chart_dir)
    docs = [
        d
        for d in yaml.safe_load_all(offline_helm.template("x", chart_dir, "ns", [all_options]))
        if d
    ]
    kinds = sorted({d["kind"] for d in docs})
    expected = {
        "hub": [
            "ConfigMap",
            "Deployment",
            "Ingress",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
        ],
        "support": [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "LimitRange",
            "PriorityClass",
            "ResourceQuota",
            "ServiceAccount",
        ],
    }[chart]
    assert kinds == expected


def test_dask_gateway_option_lints_and_renders(offline_helm: Helm, tmp_path: Path) -> None:
    """daskGateway (off by default) lints strictly when on and renders its own objects."""
    chart = REPO / "helm" / "hub"
    gateway = chart / "ci" / "dask-gateway.values.yaml"
    assert "0 chart(s) failed" in offline_helm.lint(chart, [gateway])
    docs = [d for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [gateway])) if d]
    names = {f"{d['kind']}/{d['metadata']['name']}" for d in docs}
    assert {
        "Deployment/x-dask-gateway",
        "Service/x-dask-gateway",
        "ConfigMap/x-dask-gateway",
        "NetworkPolicy/x-dask-gateway",
    } <= names
    plain = [d for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [])) if d]
    assert not [d for d in plain if "dask-gateway" in d["metadata"]["name"]]
    [hub] = [d for d in plain if d["kind"] == "Deployment" and d["metadata"]["name"] == "x-hub"]
    assert "DASK_GATEWAY_API_TOKEN" not in str(hub)
    # Enabled without an image (the stock server image cannot run clusters): a clear refusal.
    values = tmp_path / "no-image.values.yaml"
    values.write_text(
        gateway.read_text().replace("registry.example.org/hubfleet-dask-gateway", '""')
    )
    with pytest.raises(HelmError, match="build helm/hub/images/dask-gateway/Dockerfile"):
        offline_helm.template("x", chart, "ns", [values])


def test_every_values_key_is_commented() -> None:
    """Every top-level key of each chart's values.yaml has a comment line right above it."""
    for chart in ("hub", "support"):
        lines = (REPO / "helm" / chart / "values.yaml").read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line[0].isspace() and not line.startswith("#"):
                assert lines[i - 1].startswith("#"), f"{chart}: {line!r} has no comment"


def test_rendered_hub_wires_everything(offline_helm: Helm) -> None:
    chart = REPO / "helm" / "hub"
    all_options = chart / "ci" / "all-options.values.yaml"
    docs = {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [all_options]))
        if d
    }
    hub = docs["Deployment/lint-hub"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in hub["containers"][0]["env"]}
    # The ops token comes from the existing Secret named in values.
    assert env["HUBFLEET_OPS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hubfleet-ops",
        "key": "token",
    }
    assert hub["priorityClassName"] == "hubfleet-core"
    assert hub["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    ingress = docs["Ingress/lint"]["spec"]
    assert ingress["tls"] == [{"hosts": ["hub.example.org"], "secretName": "hub-example-org-tls"}]
    config = docs["ConfigMap/lint-hub"]["data"]["jupyterhub_config.py"]
    assert "jupyterhub_idle_culler" in config and "KubeSpawner" in config
    # The secret values land only in the Secret.
    assert "0123456789abcdef" * 4 not in str(docs["ConfigMap/lint-hub"])


def test_typo_fails_schema_with_key_named(offline_helm: Helm, tmp_path: Path) -> None:
    typo = tmp_path / "typo.values.yaml"
    typo.write_text("hub:\n  extraEnvv: {A: b}\n")
    with pytest.raises(ValuesInvalid, match="extraEnvv"):
        offline_helm.template("x", REPO / "helm" / "hub", "ns", [typo])


def test_helm_errors_are_scrubbed(helm, tmp_path: Path) -> None:
    secret = "s3cr3t-value-for-scrub-test"
    h = Helm(kubeconfig=None, binary=helm, secrets=[secret])
    try:
        with pytest.raises(HelmError) as info:
            h.run("template", "x", str(tmp_path / f"no-chart-{secret}"))
        assert secret not in str(info.value) and "***" in str(info.value)
    finally:
        h.close()
