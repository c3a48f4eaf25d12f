"""The real node runs containers: a pod reaches Running with a real process whose logs and
exec go through the apiserver to the kubelet; a PVC is provisioned on the node's disk and
written by a pod; a ClusterIP Service answers another pod through kube-proxy; and the
node's networks stay on this machine (checked by reading routes and NAT rules, never by
sending traffic outside)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.stream import stream
from waiting import wait_for

from testenv import build, images
from testenv.node import POD_PLACEMENT, STORAGE_CLASS

pytestmark = [pytest.mark.kube, pytest.mark.node]

# An address well outside this machine; only ever looked up in routing tables.
OUTSIDE = "1.1.1.1"
OUTSIDE6 = "2606:4700:4700::1111"


def _pod(name: str, command: list[str], **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **POD_PLACEMENT,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": images.BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def _phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return core.read_namespaced_pod(name, ns).status.phase


def _running(core: client.CoreV1Api, ns: str, name: str, timeout: float = 90.0) -> float:
    t0 = time.monotonic()

    def check():
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase in ("Failed", "Succeeded"):
            raise AssertionError(f"pod {name} ended: {pod.status}")
        return pod.status.phase == "Running"

    wait_for(f"pod {name} Running", check, timeout)
    return time.monotonic() - t0


def _exec(kube_api, ns: str, name: str, command: list[str]) -> str:
    return stream(
        client.CoreV1Api(kube_api).connect_get_namespaced_pod_exec,
        name,
        ns,
        command=command,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )


def _http_get(host: str, port: int | str, path: str) -> str:
    """A shell line that sends an HTTP/1.0 GET with busybox nc and prints the response."""
    return f"printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | nc -w 3 {host} {port}"


def _record(key: str, seconds: float) -> None:
    """Keep the measured figure beside the build times (the benchmark reads both)."""
    path = build.cache_dir() / "testenv" / "real-node-timings.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = round(seconds, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_node_is_ready_and_real(real_node, kube_api):
    node = client.CoreV1Api(kube_api).read_node(real_node.name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True", node.status.conditions
    info = node.status.node_info
    assert info.kubelet_version.startswith("v1.")
    assert info.container_runtime_version.startswith("containerd://2.")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == real_node.node_ip
    # Tainted: the kwok-based tests never land a pod here by accident.
    assert ("hubfleet.io/real-node", "true", "NoSchedule") in [
        (t.key, t.value, t.effect) for t in node.spec.taints
    ]
    _record("node_ready_s", real_node.timings["node_ready"])
    _record("node_start_total_s", real_node.timings["ready"])


def test_pod_runs_a_real_container_with_logs_and_exec(real_node, kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_pod(
        ns, _pod("hello", ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"])
    )
    seconds = _running(core, ns, "hello")
    _record("pod_running_s", seconds)
    pod = core.read_namespaced_pod("hello", ns)
    assert pod.spec.node_name == real_node.name
    assert pod.status.pod_ip and pod.status.pod_ip.startswith(real_node.pod_cidr.rsplit(".", 2)[0])
    logs = wait_for(
        "container output",
        lambda: core.read_namespaced_pod_log("hello", ns, container="main"),
        timeout=30,
    )
    assert logs.strip() == "hello from hello"
    # exec runs in the same container: PID 1 is the sleep that the shell exec'ed.
    out = _exec(kube_api, ns, "hello", ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"])
    assert out.strip() == "sleep 3600"


def test_pvc_is_provisioned_on_the_node_and_written(real_node, kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "storageClassName": STORAGE_CLASS,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "64Mi"}},
            },
        },
    )
    core.create_namespaced_pod(
        ns,
        _pod(
            "writer",
            ["sh", "-c", "echo written-by-pod > /data/proof && sync"],
            restartPolicy="Never",
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        ),
    )
    wait_for(
        "writer pod Succeeded",
        lambda: (
            _phase(core, ns, "writer") == "Succeeded"
            or (_phase(core, ns, "writer") == "Failed" and pytest.fail("writer pod failed"))
        ),
        timeout=120,
    )
    pvc = core.read_namespaced_persistent_volume_claim("data", ns)
    assert pvc.status.phase == "Bound"
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    # The provisioner's volume is a directory on the node's disk, under its work dir.
    path = Path(pv.spec.host_path.path)
    assert real_node.workdir is not None and path.is_relative_to(real_node.workdir)
    assert (path / "proof").read_text() == "written-by-pod\n"
    # Reclaim policy Delete: releasing the claim removes the volume and its directory
    # (the provisioner's teardown helper pod runs on the node).
    core.delete_namespaced_pod("writer", ns, grace_period_seconds=0)
    core.delete_namespaced_persistent_volume_claim("data", ns)

    def volume_gone() -> bool:
        try:
            core.read_persistent_volume(pv.metadata.name)
            return False
        except client.ApiException as e:
            return e.status == 404 and not path.exists()

    wait_for("the released volume and its directory to be deleted", volume_gone, timeout=90)


def test_cluster_ip_service_answers_another_pod(real_node, kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_pod(
        ns,
        _pod(
            "web",
            [
                "sh",
                "-c",
                "mkdir -p /www && echo served-by-web > /www/index.html "
                "&& exec httpd -f -p 8080 -h /www",
            ],
        ),
    )
    core.create_namespaced_pod(ns, _pod("client", ["sleep", "3600"]))
    core.create_namespaced_service(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    _running(core, ns, "web")
    _running(core, ns, "client")
    ip = core.read_namespaced_service("web", ns).spec.cluster_ip
    web_ip = core.read_namespaced_pod("web", ns).status.pod_ip
    assert ip != web_ip

    def answered():
        # A plain HTTP request over busybox nc (Debian's static busybox wget segfaults here).
        out = _exec(kube_api, ns, "client", ["sh", "-c", _http_get(ip, 80, "/")])
        return "served-by-web" in out

    # kube-proxy programs the rules once the EndpointSlice exists: a few seconds at most.
    wait_for("the Service to answer through kube-proxy", answered, timeout=60, every=1)
    rules = real_node.run_in_node("iptables-save", "-t", "nat")
    assert f"-d {ip}/32" in rules and f"{ns}/web" in rules


def test_node_networks_stay_on_this_machine(real_node, kube_api, kube_namespace):
    # Routes: no default route in the node's namespace or in a pod; an outside address has
    # no route at all (`ip route get` only consults the table, it sends nothing).
    routes = real_node.run_in_node("ip", "-4", "route", "show", "table", "all")
    assert "default" not in routes, routes
    got = subprocess.run(
        real_node.nsenter("ip", "route", "get", OUTSIDE), capture_output=True, text=True
    )
    assert got.returncode != 0 and "unreachable" in got.stderr.lower(), (got.stdout, got.stderr)
    # IPv6 too: only link-local and loopback routes, nothing outside.
    routes6 = real_node.run_in_node("ip", "-6", "route", "show", "table", "all")
    assert "default" not in routes6, routes6
    got6 = subprocess.run(
        real_node.nsenter("ip", "-6", "route", "get", OUTSIDE6), capture_output=True, text=True
    )
    assert got6.returncode != 0 and "unreachable" in got6.stderr.lower(), got6.stderr
    local = ("10.213.", "10.245.", "10.96.", "127.", "local ", "broadcast ")
    for line in routes.splitlines():
        assert any(tok in line for tok in local), f"unexpected route in node: {line}"

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(kube_namespace, _pod("probe", ["sleep", "3600"]))
    _running(core, kube_namespace, "probe")
    pod_routes = _exec(kube_api, kube_namespace, "probe", ["ip", "-4", "route"])
    assert "default" not in pod_routes, pod_routes
    pod_get = _exec(kube_api, kube_namespace, "probe", ["sh", "-c", f"ip route get {OUTSIDE} 2>&1"])
    assert "unreachable" in pod_get.lower(), pod_get

    # NAT: the only masquerading in the node is kube-proxy's, for packets its Service rules
    # marked (traffic to a Service's local endpoints); no CNI or portmap masquerade, no SNAT.
    nat = real_node.run_in_node("iptables-save", "-t", "nat")
    for rule in nat.splitlines():
        if re.search(r"-j (MASQUERADE|SNAT)\b", rule):
            assert rule.startswith("-A KUBE-POSTROUTING "), f"unexpected NAT rule: {rule}"
            assert "-o " not in rule, f"NAT rule bound to an interface: {rule}"
    assert "KUBE-POSTROUTING" in nat  # kube-proxy really runs in the node namespace
    # The host keeps its own rule set: no chain or rule of the node's leaked out.
    for save in ("iptables-save", "iptables-legacy-save"):  # both kernel back ends
        host_rules = subprocess.run([save], capture_output=True, text=True, check=True).stdout
        for marker in ("KUBE-", "CNI-", "10.245.", "10.213."):
            assert marker not in host_rules, f"{marker} in the host's rules ({save}):\n{host_rules}"
    # And the host routes nothing new outward: only the veth's subnet and the pod range.
    host_routes = subprocess.run(
        ["ip", "-4", "route"], capture_output=True, text=True, check=True
    ).stdout
    ours = [ln for ln in host_routes.splitlines() if f"hfh{real_node.index} " in ln + " "]
    assert sorted(ln.split()[0] for ln in ours) == sorted(
        [f"10.213.{real_node.index}.0/30", real_node.pod_cidr]
    ), host_routes


def test_pods_reach_the_apiserver_through_the_kubernetes_service(
    real_node, kube_api, kube_namespace
):
    # What an in-cluster client (KubeSpawner in a hub pod) does first: connect to
    # $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT. Plain HTTP to the TLS port gets the
    # apiserver's own answer, which proves the path pod -> kube-proxy -> relay -> apiserver.
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(kube_namespace, _pod("incluster", ["sleep", "3600"]))
    _running(core, kube_namespace, "incluster")
    line = _http_get("$KUBERNETES_SERVICE_HOST", "$KUBERNETES_SERVICE_PORT", "/version")
    out = wait_for(
        "the apiserver through the kubernetes Service",
        lambda: _exec(kube_api, kube_namespace, "incluster", ["sh", "-c", line]),
        timeout=30,
        every=1,
    )
    assert "Client sent an HTTP request to an HTTPS server" in out, out
