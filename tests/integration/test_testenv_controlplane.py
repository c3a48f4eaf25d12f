"""The control plane's process hygiene: `./dev testenv up` in one process, `status` and
`down` in others, stopping exactly the recorded PIDs and removing the temp dir with the keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testenv._proc import proc_starttime

pytestmark = pytest.mark.kube


def _cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testenv.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.node  # `up` starts a real node: in the node group, never beside the other
def test_up_status_down_across_processes(testenv_tools, real_node_tools, tmp_path):
    state_file = tmp_path / "state.json"
    node_state_file = tmp_path / "node.json"  # beside the control plane's state
    env = dict(os.environ, HUBFLEET_TESTENV_STATE=str(state_file))

    assert _cli(env, "status").returncode == 1  # nothing recorded yet

    up = _cli(env, "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        export = [ln for ln in up.stdout.splitlines() if ln.startswith("export KUBECONFIG=")]
        assert export, up.stdout
        kubeconfig = Path(export[0].split("=", 1)[1])
        state = json.loads(state_file.read_text())
        assert str(kubeconfig) == state["kubeconfig"] and kubeconfig.exists()
        assert {c["name"] for c in state["components"]} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        # The `up` process has exited; the components it started are still serving.
        for c in state["components"]:
            assert proc_starttime(c["pid"]) == c["starttime"], c

        status = _cli(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert state["server"] in status.stdout and "DEAD" not in status.stdout

        # A client in yet another process can use the kubeconfig.
        from kubernetes import client, config

        # `up` also started a real node (kubelet, containerd, kube-proxy ...), Ready.
        node_state = json.loads(node_state_file.read_text())
        assert {c["name"] for c in node_state["components"]} == {
            "apiserver-relay",
            "containerd",
            "kubelet",
            "kube-proxy",
            "local-path-provisioner",
        }
        for c in node_state["components"]:
            assert proc_starttime(c["pid"]) == c["starttime"], c
        assert node_state["name"] in status.stdout

        with config.new_client_from_config(config_file=str(kubeconfig)) as api:
            nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
        assert {"kwok-core-0", "kwok-user-0"} <= set(nodes)
        conditions = {c.type: c.status for c in nodes[node_state["name"]].status.conditions}
        assert conditions["Ready"] == "True"

        # A second `up` does not start a second control plane.
        again = _cli(env, "up")
        assert again.returncode == 0 and "already running" in again.stdout
        assert json.loads(state_file.read_text())["components"] == state["components"]
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for c in state["components"] + node_state["components"]:
        assert proc_starttime(c["pid"]) is None, f"{c['name']} (pid {c['pid']}) still running"
    assert not Path(state["workdir"]).exists(), "temp dir with keys left behind"
    assert not Path(node_state["workdir"]).exists(), "node work dir left behind"
    # The node's cgroup tree, veth and namespaces are gone with it.
    assert not list(Path("/sys/fs/cgroup").glob(f"*/hubfleet-node-{node_state['index']}"))
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"hfh{node_state['index']}" not in links
    mounts = Path("/proc/self/mountinfo").read_text()
    assert node_state["workdir"] not in mounts
    assert not state_file.exists() and not node_state_file.exists()
    assert _cli(env, "status").returncode == 1


def test_stop_kills_every_process_and_removes_keys(testenv_tools):
    from testenv.controlplane import ControlPlane

    with ControlPlane(testenv_tools) as cp:
        pids = {c.name: c.pid for c in cp.components.values()}
        workdir = cp.workdir
        assert (workdir / "pki" / "ca.key").exists()
        assert oct((workdir / "pki" / "sa.key").stat().st_mode & 0o777) == "0o600"
    assert all(proc_starttime(pid) is None for pid in pids.values()), pids
    assert not workdir.exists()
