"""The Debian base image, built here with debootstrap, runs Python on the real node, and
ships none of the host's network details."""

from __future__ import annotations

import tarfile
import time

import pytest
from kubernetes import client

from testenv import rootfs
from testenv.node import POD_PLACEMENT

pytestmark = [pytest.mark.kube, pytest.mark.node]


@pytest.fixture(scope="session")
def debian_base():
    try:
        return rootfs.build_debian_base()
    except Exception as e:  # an ImageBuildError names the failing step
        pytest.fail(f"building the Debian base image failed: {e}", pytrace=False)


def test_base_image_ships_no_host_details(debian_base):
    with tarfile.open(debian_base.path) as outer:
        names = outer.getnames()
    assert "index.json" in names
    # The single layer is the largest blob; look inside it for host files.
    with tarfile.open(debian_base.path) as outer:
        layer_member = max(outer.getmembers(), key=lambda m: m.size)
        layer = outer.extractfile(layer_member)
        assert layer is not None
        with tarfile.open(fileobj=layer, mode="r|") as inner:
            files = {m.name for m in inner}
    assert "usr/bin/python3" in files or "usr/bin/python3.11" in files
    for host_file in ("etc/resolv.conf", "etc/hostname"):
        assert host_file not in files
    assert not any(n.startswith("var/lib/apt/lists/") and n.endswith("_Packages") for n in files)
    assert not any(n.startswith("var/cache/apt/archives/") and n.endswith(".deb") for n in files)


def test_base_image_runs_python_on_the_real_node(debian_base, real_node, kube_api, kube_namespace):
    real_node.import_image(debian_base)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        kube_namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "py"},
            "spec": {
                **POD_PLACEMENT,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": debian_base.ref,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [
                            "sh",
                            "-c",
                            "cat /etc/debian_version; python3 -c 'print(6 * 7)'",
                        ],
                    }
                ],
            },
        },
    )
    deadline = time.monotonic() + 120
    while (phase := core.read_namespaced_pod("py", kube_namespace).status.phase) not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, f"pod still {phase}"
        time.sleep(0.3)
    logs = core.read_namespaced_pod_log("py", kube_namespace).split()
    assert phase == "Succeeded", logs
    assert logs[0].startswith("12.") and logs[1] == "42", logs
