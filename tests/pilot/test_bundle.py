"""`hubfleet export-hub`: the bundle installs with plain helm (its own install.sh) into the
real test control plane (kwok makes pods Ready) and holds no secret value. A hub without a
Dask Gateway is plain Zero to JupyterHub: the bundle names the upstream chart and version
(here the tests' local chart repository) and holds z2jh's own values."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from prefect.blocks.system import Secret
from ruamel.yaml import YAML

from hubfleet.bundle import PLACEHOLDER

pytestmark = [pytest.mark.kube]
REPO = Path(__file__).resolve().parents[2]


def test_bundle_installs_with_plain_helm_and_has_no_secret(
    kube_pilot_fleet, kube, kube_api, helm, prefect_server, tmp_path
) -> None:
    cluster = next((kube_pilot_fleet / "clusters").iterdir()).name
    cookie, token = secrets.token_hex(32), secrets.token_hex(32)
    z2jh = {"hub": {"cookieSecret": cookie}, "proxy": {"secretToken": token}}
    Secret(value={"jupyterhub": z2jh}).save(f"hub-values-{cluster}-lab", overwrite=True)
    bundle = tmp_path / "bundle"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubfleet.cli",
            "export-hub",
            cluster,
            "lab",
            str(bundle),
            "--fleet",
            str(kube_pilot_fleet),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in bundle.iterdir()} == {
        "values.yaml",
        "secrets.example.yaml",
        "install.sh",
        "README.md",
    }
    # No secret value anywhere in the bundle (every file, binary or not).
    for path in bundle.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert cookie.encode() not in data and token.encode() not in data, path

    values = YAML(typ="safe").load((bundle / "values.yaml").read_text())
    assert values["singleuser"]["storage"]["capacity"] == "50Gi"  # the research preset
    assert values["hub"]["config"]["JupyterHub"]["concurrent_spawn_limit"] == 20  # cluster
    # hubfleet's own users and roles stay behind; the rest of hub.loadRoles is kept.
    assert not [r for r in values["hub"].get("loadRoles", {}) if r.startswith("hubfleet")]
    assert "hubfleet-refuse-logins" not in values["hub"].get("extraConfig", {})
    install = (bundle / "install.sh").read_text()
    assert f"jupyterhub --repo {os.environ['HUBFLEET_CHART_REPOSITORY']} --version 4.4.0" in (
        install
    )
    example = YAML(typ="safe").load((bundle / "secrets.example.yaml").read_text())
    assert example["hub"]["cookieSecret"].startswith(PLACEHOLDER)
    assert example["proxy"]["secretToken"].startswith(PLACEHOLDER)

    # The community's side: plain helm, no hubfleet. Unfilled placeholders are refused.
    ns = f"replica-{cluster}"
    bin_dir = tmp_path / "bin"  # the community's PATH: a `helm` 3 and nothing of hubfleet
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm)
    run_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "KUBECONFIG": str(kube.kubeconfig),
        "HOME": str(tmp_path),
    }
    (bundle / "secrets.yaml").write_text((bundle / "secrets.example.yaml").read_text())
    refused = subprocess.run(
        [str(bundle / "install.sh"), ns], capture_output=True, text=True, env=run_env, timeout=60
    )
    assert refused.returncode == 2 and PLACEHOLDER in refused.stderr
    (bundle / "secrets.yaml").write_text(
        f"hub: {{cookieSecret: {secrets.token_hex(32)}}}\n"
        f"proxy: {{secretToken: {secrets.token_hex(32)}}}\n"
    )
    try:
        done = subprocess.run(
            [str(bundle / "install.sh"), ns],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        apps = client.AppsV1Api(kube_api)
        assert apps.read_namespaced_deployment("hub", ns).status.ready_replicas == 1
        assert apps.read_namespaced_deployment("proxy", ns).status.ready_replicas == 1
        pods = client.CoreV1Api(kube_api).list_namespaced_pod(ns).items
        assert pods and all(
            any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods
        )
    finally:
        subprocess.run(
            [str(helm), "uninstall", "lab", "-n", ns, "--wait"],
            capture_output=True,
            env=run_env,
            timeout=120,
        )
        try:
            client.CoreV1Api(kube_api).delete_namespace(ns)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
