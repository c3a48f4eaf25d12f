"""The hub, single-user and proxy images, built here on the Debian base (hubimages.py), run
as real pods on the real node with the versions versions.toml pins, ship none of the
host's network or TLS details, and are keyed by those versions."""

from __future__ import annotations

import io
import re
import tarfile
import time
from pathlib import Path

import pytest
from kubernetes import client

from testenv import hubimages
from testenv.node import POD_PLACEMENT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hub_images():
    try:
        return {name: hubimages.build_image(name) for name in hubimages.PINNED_IMAGES}
    except Exception as e:  # an ImageBuildError names the image, the command, its output
        pytest.fail(f"building the hub images failed: {e}", pytrace=False)


def test_pinned_versions_agree_with_the_chart_and_dev():
    v = hubimages.image_versions()
    chart = (REPO / "helm" / "hub" / "Chart.yaml").read_text()
    # The hub chart is z2jh 4.4.0's wrapper: its appVersion is the JupyterHub of z2jh's own
    # hub image, which the k8s-hub image installs from the release's frozen requirements.
    wheels, _ = hubimages._z2jh_requirements()
    app = re.search(r'^appVersion: "?([^"\s]+)', chart, re.M)[1]  # type: ignore[index]
    assert f"jupyterhub=={app}" in wheels
    dev = (REPO / "dev").read_text()
    assert re.search(r"^CHP_VERSION=(\S+)", dev, re.M)[1] == v["configurable_http_proxy"]  # type: ignore[index]


def test_a_version_bump_changes_only_that_images_key(monkeypatch):
    pinned = hubimages.image_versions()
    keys = {name: hubimages.image_key(name) for name in hubimages.RECIPES}
    monkeypatch.setattr(
        hubimages, "image_versions", lambda: pinned | {"jupyterlab": pinned["jupyterlab"] + "1"}
    )
    bumped = {name: hubimages.image_key(name) for name in hubimages.RECIPES}
    assert bumped["singleuser"] != keys["singleuser"]
    assert bumped["hub"] == keys["hub"] and bumped["proxy"] == keys["proxy"]
    assert bumped["worker"] == keys["worker"]


@pytest.mark.parametrize("name", sorted(hubimages.PINNED_IMAGES))
def test_image_is_the_base_layer_plus_one_without_host_details(hub_images, name):
    from testenv import rootfs

    base_layers = hubimages._archive_layers(rootfs.build_debian_base().path)
    layers = hubimages._archive_layers(hub_images[name].path)
    assert len(layers) == 2 and layers[0] == base_layers[0]
    with tarfile.open(fileobj=io.BytesIO(layers[1])) as tar:
        files = set(tar.getnames())
    for host_file in (
        "etc/resolv.conf",
        "etc/hostname",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/pip.conf",
        "root/.npmrc",
    ):
        assert host_file not in files
    assert not any(n.startswith(("tmp/", "root/.cache/", "var/lib/apt/lists/")) for n in files)


def _run_pods(core, namespace: str, pods: dict[str, dict]) -> dict[str, str]:
    """Create every pod (restartPolicy Never), wait for all to finish; name -> logs."""
    for name, container in pods.items():
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    **POD_PLACEMENT,
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "imagePullPolicy": "Never", **container},
                    ],
                },
            },
        )
    deadline = time.monotonic() + 180
    logs: dict[str, str] = {}
    for name in pods:
        while (phase := core.read_namespaced_pod(name, namespace).status.phase) not in (
            "Succeeded",
            "Failed",
        ):
            assert time.monotonic() < deadline, f"pod {name} still {phase}"
            time.sleep(0.3)
        logs[name] = core.read_namespaced_pod_log(name, namespace)
        assert phase == "Succeeded", (name, logs[name])
    return logs


@pytest.mark.kube
@pytest.mark.node
def test_images_run_as_pods_on_the_real_node(hub_images, real_node, kube_api, kube_namespace):
    v = hubimages.image_versions()
    for name in ("hub", "singleuser", "proxy"):  # k8s-hub runs in test_z2jh_on_node.py
        real_node.import_image(hub_images[name])
    core = client.CoreV1Api(kube_api)
    logs = _run_pods(
        core,
        kube_namespace,
        {
            # As helm/hub's hub Deployment runs it: uid 1000.
            "hub": {
                "image": hub_images["hub"].ref,
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                "command": [
                    "sh",
                    "-c",
                    "jupyterhub --version && python -c 'import kubespawner' && echo kubespawner ok"
                    " && python -c 'import jupyterhub_idle_culler' && echo idle-culler ok",
                ],
            },
            # The image's own user (jovyan, 1000).
            "singleuser": {
                "image": hub_images["singleuser"].ref,
                "command": [
                    "sh",
                    "-c",
                    "python -c 'import jupyterlab, ipykernel' && echo lab ok"
                    " && jupyterhub-singleuser --version",
                ],
            },
            # The image's entrypoint, as nobody (65534) like the chart's proxy.
            "proxy": {"image": hub_images["proxy"].ref, "args": ["--version"]},
        },
    )
    assert logs["hub"].split() == [v["jupyterhub"], "kubespawner", "ok", "idle-culler", "ok"]
    assert logs["singleuser"].split() == ["lab", "ok", v["jupyterhub"]]
    assert logs["proxy"].strip() == v["configurable_http_proxy"] == "5.3.0"
