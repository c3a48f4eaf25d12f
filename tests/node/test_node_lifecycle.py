"""A node whose owner is SIGKILLed leaves containers, cgroups, namespaces and a veth
behind; the next start (reap_stale_nodes) removes them all, by PID, and leaves live nodes
alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from testenv import images
from testenv._proc import proc_starttime
from testenv.node import NODE_LABEL, _cgroup_pids, reap_stale_nodes

pytestmark = [pytest.mark.kube, pytest.mark.node]

OWNER = """
import json, sys, time
from pathlib import Path
from testenv.node import RealNode, ensure_node_tools
node = RealNode(sys.argv[1], Path(sys.argv[2]), ensure_node_tools(lambda m: None))
node.start()
print(json.dumps({"name": node.name, "index": node.index, "workdir": str(node.workdir)}),
      flush=True)
time.sleep(600)
"""


def test_a_killed_owners_node_is_reaped(kube, real_node, kube_api, kube_namespace):
    assert kube.workdir is not None and kube.server is not None
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, kube.server, str(kube.workdir / "pki")],
        stdout=subprocess.PIPE,
        text=True,
    )
    core = client.CoreV1Api(kube_api)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, f"owner exited: {owner.wait()}"
        doomed = json.loads(line)
        # A container on the doomed node: its shim and processes outlive the owner.
        core.create_namespaced_pod(
            kube_namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "orphan"},
                "spec": {
                    "nodeName": doomed["name"],
                    "tolerations": [{"key": NODE_LABEL, "operator": "Exists"}],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": images.BUSYBOX_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"],
                        }
                    ],
                },
            },
        )
        deadline = time.monotonic() + 60
        while core.read_namespaced_pod("orphan", kube_namespace).status.phase != "Running":
            assert time.monotonic() < deadline, "pod on the doomed node never ran"
            time.sleep(0.3)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    cgroup = f"hubfleet-node-{doomed['index']}"
    try:
        # The daemons die with their owner (parent-death signal); the containers do not.
        marker = json.loads((Path(doomed["workdir"]) / "node.json").read_text())
        daemons = [(c["pid"], c["starttime"]) for c in marker["components"]]
        assert {c["name"] for c in marker["components"]} >= {"kubelet", "containerd"}
        deadline = time.monotonic() + 15
        while any(proc_starttime(pid) == st for pid, st in daemons):
            assert time.monotonic() < deadline, "daemons outlived their owner"
            time.sleep(0.2)
        left = _cgroup_pids(cgroup)
        assert left, "expected the pod's processes to outlive the owner"

        reaped = reap_stale_nodes()

        assert doomed["workdir"] in reaped
        assert real_node.workdir is not None and str(real_node.workdir) not in reaped
        assert all(proc_starttime(pid) is None for pid in left), left
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup}"))
        assert not Path(doomed["workdir"]).exists()
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f"hfh{doomed['index']} " not in links and f"hfh{doomed['index']}@" not in links
        assert doomed["workdir"] not in Path("/proc/self/mountinfo").read_text()
        # The live node is untouched.
        node = core.read_node(real_node.name)
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        assert os.path.isdir(real_node.workdir)
    finally:
        core.delete_node(doomed["name"])
        reap_stale_nodes()
