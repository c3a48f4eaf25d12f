"""tasks.kube_portforward on the real node: a local port relayed through the API server's
port-forward to busybox httpd in a pod answers sequential and concurrent HTTP requests with
the right bodies, picks the Ready pod among those matching the selector (again when that pod
is replaced), survives a client that hangs up abruptly, refuses to start without a Ready pod,
and on close() ends open relays and frees its port."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from hubfleet.errors import HubfleetError
from tasks.kube_portforward import PortForward
from testenv import images
from testenv.node import POD_PLACEMENT

pytestmark = [pytest.mark.kube, pytest.mark.node]

# No proxy handler: whatever the environment says, requests go straight to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
BIG = "".join(f"{i}\n" for i in range(1, 50001))  # ~290 kB: several websocket frames


def _pod(name: str, role: str, command: str, probe: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "pf", "role": role}},
        "spec": {
            **POD_PLACEMENT,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": images.BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", command],
                    "readinessProbe": {**probe, "periodSeconds": 1},
                }
            ],
        },
    }


WEB = (
    "mkdir -p /www && echo alpha > /www/a.txt && echo beta > /www/b.txt "
    "&& seq 1 50000 > /www/big.txt && exec httpd -f -p 8080 -h /www"
)


def _web(core, ns):
    core.create_namespaced_pod(ns, _pod("web", "web", WEB, {"tcpSocket": {"port": 8080}}))


def _stuck(core, ns):
    # Running but never Ready: its readiness probe always fails.
    core.create_namespaced_pod(
        ns, _pod("stuck", "stuck", "exec sleep 3600", {"exec": {"command": ["false"]}})
    )


def _wait_pod(core, ns, name, ready: bool, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, ns)
        assert pod.status.phase not in ("Failed", "Succeeded"), pod.status
        conditions = {c.type: c.status for c in (pod.status.conditions or [])}
        if pod.status.phase == "Running" and (not ready or conditions.get("Ready") == "True"):
            return
        time.sleep(0.3)
    raise AssertionError(f"pod {name} not {'Ready' if ready else 'Running'} in {timeout}s")


def _wait_gone(core, ns, name, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, ns)
        except client.ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(0.3)
    raise AssertionError(f"pod {name} still there after {timeout}s")


def _get(url: str) -> str:
    with _OPENER.open(url, timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def test_relay_answers_sequential_and_concurrent_requests(real_node, kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    _web(core, ns)
    _stuck(core, ns)
    _wait_pod(core, ns, "web", ready=True)
    _wait_pod(core, ns, "stuck", ready=False)

    threads_before = threading.active_count()
    with PortForward(kube_api, ns, "app=pf", 8080) as pf:
        assert pf.pod == "web"  # the Ready one, though "stuck" matches the selector too
        assert pf.url == f"http://127.0.0.1:{pf.local_port}" and pf.local_port > 0
        t0 = time.monotonic()
        for i in range(6):
            name, body = ("a", "alpha\n") if i % 2 == 0 else ("b", "beta\n")
            assert _get(f"{pf.url}/{name}.txt") == body
        assert _get(f"{pf.url}/big.txt") == BIG
        sequential = time.monotonic() - t0

        # A client that connects, sends half a request and hangs up: only its relay ends.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", pf.local_port)) as s:
                s.sendall(b"GET /a.t")
        assert _get(f"{pf.url}/a.txt") == "alpha\n"

        paths = ["a.txt", "b.txt", "big.txt", "a.txt", "big.txt", "b.txt"]
        want = {"a.txt": "alpha\n", "b.txt": "beta\n", "big.txt": BIG}
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(paths)) as pool:
            got = list(pool.map(lambda p: _get(f"{pf.url}/{p}"), paths))
        concurrent = time.monotonic() - t0
        assert got == [want[p] for p in paths]

        # The pod is replaced (as a deploy restarts the hub's proxy): the next connection
        # finds the old pod gone and picks the new Ready one.
        core.delete_namespaced_pod("web", ns, grace_period_seconds=0)
        _wait_gone(core, ns, "web")
        core.create_namespaced_pod(ns, _pod("web2", "web", WEB, {"tcpSocket": {"port": 8080}}))
        _wait_pod(core, ns, "web2", ready=True)
        assert _get(f"{pf.url}/b.txt") == "beta\n"
        assert pf.pod == "web2"

        port = pf.local_port
        # A relay still open at close(): a request the server is still waiting to complete.
        held = socket.create_connection(("127.0.0.1", port))
        held.sendall(b"GET /a.txt HTTP/1.0\r\n")
        deadline = time.monotonic() + 10
        while not pf._open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pf._open, "the held connection's relay never opened"
        print(f"7 sequential requests {sequential:.2f}s, {len(paths)} concurrent {concurrent:.2f}s")

    # Closed: the held relay is ended, nothing listens on the port any more, the relay
    # threads (ours and the client library's per-stream proxies) are gone; a second close()
    # is harmless.
    held.settimeout(10)
    try:
        assert held.recv(1024) == b""
    except ConnectionResetError:
        pass
    held.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads_before, threading.enumerate()
    pf.close()


def test_no_ready_pod_is_a_clear_error(real_node, kube_api, kube_namespace):
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    with pytest.raises(HubfleetError) as missing:
        PortForward(kube_api, ns, "app=nothing-here", 8080).start()
    assert ns in str(missing.value) and "app=nothing-here" in str(missing.value)
    assert "0 matching" in str(missing.value)

    _stuck(core, ns)
    _wait_pod(core, ns, "stuck", ready=False)
    pf = PortForward(kube_api, ns, "role=stuck", 8080)
    with pytest.raises(HubfleetError) as not_ready:
        pf.start()
    assert ns in str(not_ready.value) and "role=stuck" in str(not_ready.value)
    assert "1 matching, none Ready" in str(not_ready.value)
    assert pf.local_port == 0  # nothing was bound
    pf.close()
