"""Proof that helm (built from helm.sh/helm/v3) drives the local control plane through the
whole release lifecycle hubfleet uses: install, upgrade, rollback, history, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

pytestmark = pytest.mark.kube

CHART_YAML = """\
apiVersion: v2
name: tiny-hub
version: 0.1.0
appVersion: "1.0"
kubeVersion: ">= 1.30.0-0"
"""

VALUES_YAML = """\
replicas: 1
message: hello
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-hub
  labels: {app: {{ .Release.Name }}-hub}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}-hub}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}-hub}
      annotations:
        checksum/config: {{ .Values.message | sha256sum }}
    spec:
      nodeSelector: {hub.jupyter.org/node-purpose: core}
      containers:
        - name: hub
          image: quay.io/jupyterhub/k8s-hub:4.0.0
          env:
            - name: MESSAGE
              valueFrom: {configMapKeyRef: {name: {{ .Release.Name }}-config, key: message}}
"""

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  message: {{ .Values.message | quote }}
"""


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    d = tmp_path / "tiny-hub"
    (d / "templates").mkdir(parents=True)
    (d / "Chart.yaml").write_text(CHART_YAML)
    (d / "values.yaml").write_text(VALUES_YAML)
    (d / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
    (d / "templates" / "configmap.yaml").write_text(CONFIGMAP)
    return d


@pytest.fixture
def run_helm(helm, kube, tmp_path):
    """Run helm against the control plane with its own config/cache dirs (no user state)."""
    env = dict(
        os.environ,
        KUBECONFIG=str(kube.kubeconfig),
        HELM_CONFIG_HOME=str(tmp_path / "helm-config"),
        HELM_CACHE_HOME=str(tmp_path / "helm-cache"),
        HELM_DATA_HOME=str(tmp_path / "helm-data"),
    )

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(helm), *args], env=env, capture_output=True, text=True, timeout=180)
        if check and p.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return p

    return run


def test_helm_release_lifecycle(run_helm, chart, kube_api, kube_namespace):
    ns = kube_namespace
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)

    # --wait: helm itself waits until the Deployment's pods are Ready (kwok makes them so).
    run_helm("install", "hub1", str(chart), "-n", ns, "--wait", "--timeout", "90s")
    assert apps.read_namespaced_deployment("hub1-hub", ns).status.ready_replicas == 1
    assert core.read_namespaced_config_map("hub1-config", ns).data["message"] == "hello"

    run_helm(
        "upgrade",
        "hub1",
        str(chart),
        "-n",
        ns,
        "--set",
        "replicas=2,message=upgraded",
        "--wait",
        "--timeout",
        "90s",
    )
    assert apps.read_namespaced_deployment("hub1-hub", ns).status.ready_replicas == 2
    assert core.read_namespaced_config_map("hub1-config", ns).data["message"] == "upgraded"
    values = json.loads(run_helm("get", "values", "hub1", "-n", ns, "-o", "json").stdout)
    assert values == {"message": "upgraded", "replicas": 2}

    run_helm("rollback", "hub1", "1", "-n", ns, "--wait", "--timeout", "90s")
    assert core.read_namespaced_config_map("hub1-config", ns).data["message"] == "hello"
    assert apps.read_namespaced_deployment("hub1-hub", ns).spec.replicas == 1

    history = json.loads(run_helm("history", "hub1", "-n", ns, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3]
    assert [h["status"] for h in history] == ["superseded", "superseded", "deployed"]
    assert history[2]["description"] == "Rollback to 1"

    run_helm("uninstall", "hub1", "-n", ns, "--wait", "--timeout", "90s")
    assert run_helm("status", "hub1", "-n", ns, check=False).returncode != 0
    assert json.loads(run_helm("list", "-n", ns, "-a", "-o", "json").stdout) == []
    assert apps.list_namespaced_deployment(ns).items == []
    # Helm's release records (Secrets of type helm.sh/release.v1) are gone too.
    assert core.list_namespaced_secret(ns, field_selector="type=helm.sh/release.v1").items == []


def test_helm_reports_failed_rollout(run_helm, chart, kube_namespace):
    """A release whose pods can never be scheduled fails --wait: the check can fail."""
    # Select a node purpose no node has: the pod stays Pending and helm must report failure.
    (chart / "templates" / "deployment.yaml").write_text(
        DEPLOYMENT.replace(
            "hub.jupyter.org/node-purpose: core", "hub.jupyter.org/node-purpose: nowhere"
        )
    )
    p = run_helm(
        "install",
        "stuck",
        str(chart),
        "-n",
        kube_namespace,
        "--wait",
        "--timeout",
        "8s",
        check=False,
    )
    assert p.returncode != 0
    history = json.loads(run_helm("history", "stuck", "-n", kube_namespace, "-o", "json").stdout)
    assert history[-1]["status"] == "failed"
