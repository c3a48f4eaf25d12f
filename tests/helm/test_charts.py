"""helm/hub (hubfleet's wrapper of the upstream Zero to JupyterHub chart, assembled with
z2jh 4.4.0 from the tests' local chart repository) and helm/support with the real helm
binary: strict lint, rendering with every option set, and the schemas refusing a typo
(with the key named)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubfleet.charts import hub_chart
from hubfleet.layers import ValuesInvalid
from tasks.helm import Helm, HelmError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline_helm(helm) -> Helm:
    h = Helm(kubeconfig=None, binary=helm)
    yield h
    h.close()


def chart_dir(name: str) -> Path:
    """The chart as hubfleet installs it: helm/hub is assembled with z2jh in charts/."""
    return hub_chart("4.4.0") if name == "hub" else REPO / "helm" / name


@pytest.mark.parametrize("chart", ["hub", "support"])
def test_lint_strict_and_template_with_every_option(offline_helm: Helm, chart: str) -> None:
    chart_dir_ = chart_dir(chart)
    all_options = REPO / "helm" / chart / "ci" / "all-options.values.yaml"
    assert "0 chart(s) failed" in offline_helm.lint(chart_dir_, [all_options])
    assert "0 chart(s) failed" in offline_helm.lint(chart_dir_)
    docs = [
        d
        for d in yaml.safe_load_all(offline_helm.template("x", chart_dir_, "ns", [all_options]))
        if d
    ]
    kinds = sorted({d["kind"] for d in docs})
    expected = {
        "hub": [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "Ingress",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "PriorityClass",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "StatefulSet",
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
    chart = hub_chart("4.4.0")
    gateway = REPO / "helm" / "hub" / "ci" / "dask-gateway.values.yaml"
    assert "0 chart(s) failed" in offline_helm.lint(chart, [gateway])
    docs = [d for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [gateway])) if d]
    names = {f"{d['kind']}/{d['metadata']['name']}" for d in docs}
    assert {
        "Deployment/dask-gateway",
        "Service/dask-gateway",
        "ConfigMap/dask-gateway",
        "NetworkPolicy/dask-gateway",
    } <= names
    # The gateway reads the API token z2jh generates for the service hubfleet registers
    # (hubfleet.values.dask_gateway_values), from z2jh's `hub` Secret.
    [gw] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dask-gateway"
    ]
    env = {e["name"]: e for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.dask-gateway.apiToken",
    }
    plain = [d for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [])) if d]
    assert not [d for d in plain if "dask-gateway" in d["metadata"]["name"]]
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


def test_rendered_hub_is_z2jh_with_hubfleets_defaults(offline_helm: Helm) -> None:
    chart = hub_chart("4.4.0")
    all_options = REPO / "helm" / "hub" / "ci" / "all-options.values.yaml"
    docs = {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", [all_options]))
        if d
    }
    # z2jh's own objects, named as z2jh names them; the wrapper adds only the gateway's.
    assert {"Deployment/hub", "Deployment/proxy", "Secret/hub", "Service/proxy-public"} <= set(docs)
    assert docs["Deployment/hub"]["metadata"]["labels"]["chart"] == "jupyterhub-4.4.0"
    # hubfleet's defaults: the cluster's ingress in front, no load balancer per hub ...
    ingress = docs["Ingress/jupyterhub"]["spec"]
    assert ingress["tls"] == [{"hosts": ["hub.example.org"], "secretName": "hub-example-org-tls"}]
    plain = {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in yaml.safe_load_all(offline_helm.template("x", chart, "ns", []))
        if d
    }
    assert plain["Service/proxy-public"]["spec"]["type"] == "ClusterIP"
    # ... and no pre-puller hook holding every upgrade.
    assert not [k for k in plain if "hook-image" in k]
    # The secret values land only in the Secret.
    assert "0123456789abcdef" * 4 not in str(docs["ConfigMap/hub"])


def test_typo_fails_schema_with_key_named(offline_helm: Helm, tmp_path: Path) -> None:
    typo = tmp_path / "typo.values.yaml"
    typo.write_text("jupyterhub:\n  hub:\n    extraEnvv: {A: b}\n")
    with pytest.raises(ValuesInvalid, match="extraEnvv"):
        offline_helm.template("x", hub_chart("4.4.0"), "ns", [typo])
    typo.write_text("daskGateway:\n  enabledd: true\n")
    with pytest.raises(ValuesInvalid, match="enabledd"):
        offline_helm.template("x", hub_chart("4.4.0"), "ns", [typo])


def test_helm_errors_are_scrubbed(helm, tmp_path: Path) -> None:
    secret = "s3cr3t-value-for-scrub-test"
    h = Helm(kubeconfig=None, binary=helm, secrets=[secret])
    try:
        with pytest.raises(HelmError) as info:
            h.run("template", "x", str(tmp_path / f"no-chart-{secret}"))
        assert secret not in str(info.value) and "***" in str(info.value)
    finally:
        h.close()
