"""A real Kubernetes node for the test control plane: kubelet, containerd + runc, CNI
(bridge, host-local, loopback, portmap), kube-proxy, and rancher's local-path-provisioner
for dynamic host-path PVCs. Beside the kwok nodes, which stay for many-node tests.

Confinement. Every node process runs inside one persistent network namespace and one
persistent mount namespace (``nsenter --net --mount``), made once per node and bound to
files in the node's work dir:

* network: only a veth pair to the host (``10.213.<n>.2/30`` in the node,
  ``.1`` on the host) and the CNI bridge with the pods (``10.245.<n>.0/24``). No default
  route: an address outside the machine is unreachable from the node and its pods, and the
  bridge plugin does no masquerading. The host gets one route, to the pod range through
  the veth (so the apiserver can reach pods), and keeps its own rule set untouched: the
  kubelet's, kube-proxy's and portmap's iptables chains live in the node's namespace.
* mount: a fresh sysfs (so the node sees its own interfaces) with the host's cgroup
  hierarchies moved back under it, a tmpfs on ``/run`` and a copy-on-write overlay on
  ``/var``: the kubelet, containerd, runc and libcni write to fixed host paths
  (``/var/lib/kubelet/pki``, ``/var/log/containers``, ``/var/lib/cni``,
  ``/run/containerd/...``) that would otherwise land on the host.

The apiserver listens on host loopback; the node reaches it through a socat relay on the
host end of the veth (the apiserver's certificate is checked against its ``kubernetes``
name). The apiserver reaches the kubelet at the node IP (``InternalIP``) with its own
client certificate, which the kubelet's x509 client CA trusts: ``kubectl logs/exec`` work.

cgroup v1 (this machine): kubelet ``failCgroupV1: false`` with the cgroupfs driver under
its own cgroup root ``/hubfleet-node-<n>``, created here in every hierarchy (the kubelet
does not create it). The node's daemons run in ``/hubfleet-node-<n>/system``, so every
process of the node (daemons, shims, containers) is in that tree: teardown stops the
daemons by PID, then kills the remaining PIDs listed in the tree, removes the cgroups
depth-first, unmounts the namespaces and removes the host veth.

The node is tainted ``hubfleet.io/real-node=true:NoSchedule`` and labelled
``hubfleet.io/real-node=true``: only pods that ask for it land here; the kwok-based tests
keep scheduling onto kwok nodes. No registry exists: images are imported with
``ctr images import`` (see images.py) and used with ``imagePullPolicy: IfNotPresent``.
"""

from __future__ import annotations

import atexit
import base64
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import build, images
from ._proc import Component, log_tail, pdeathsig_preexec, proc_starttime, terminate_pids
from .controlplane import SERVICE_CIDR, _cert, _key, _name, _pem_cert, _pem_key

NODE_LABEL = "hubfleet.io/real-node"
NODE_TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
# A pod spec fragment that puts a pod on the real node.
POD_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {NODE_LABEL: "true"},
    "tolerations": [{"key": NODE_LABEL, "operator": "Equal", "value": "true"}],
}
#: Tests label a namespace with this when its pods run on the real node (test-only
#: admission policies that stand in for a kubelet on kwok leave such namespaces alone).
REAL_NODE_NAMESPACE_LABEL = "hubfleet.test/real-node-pods"
STORAGE_CLASS = "hubfleet-local-path"
PROVISIONER_NAME = "rancher.io/local-path"
PROVISIONER_NAMESPACE = "local-path-storage"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian containernetworking-plugins
RUNC = Path("/usr/sbin/runc")  # Debian runc
# Node networks: 10.213.<n>.0/30 for the veth pair, 10.245.<n>.0/24 for pods (outside the
# kwok nodes' fake 10.244.0.0/16, so no fake pod IP collides with a real one).
NODE_NET = "10.213.{n}.0/30"
POD_NET = "10.245.{n}.0/24"
# The apiserver as every node sees it: one address on the host end of every node's veth,
# where each node's relay listens (SO_REUSEPORT: any live relay answers). One address for
# all nodes lets the `kubernetes` Service have one endpoint that works from every node.
RELAY_IP = "10.213.0.1"


class RealNodeError(RuntimeError):
    """The real node failed to start (the message carries the failing step's output)."""


@dataclass(frozen=True)
class NodeTools:
    """The binaries a real node runs."""

    kubelet: Path
    kube_proxy: Path
    containerd_dir: Path
    local_path_provisioner: Path
    images: tuple[images.ImageArchive, ...]


@build.serialized
def ensure_node_tools(progress: Callable[[str], None] = print) -> NodeTools:
    """Build or reuse kubelet, kube-proxy, containerd, local-path-provisioner and images."""
    v = build.load_versions()
    missing = [
        p
        for p in (
            "/usr/sbin/runc",
            "/usr/lib/cni/bridge",
            "/bin/busybox",
            "/usr/bin/socat",
            "/usr/sbin/iptables",
        )
        if not Path(p).exists()
    ]
    if missing:
        raise build.ToolBuildError(
            "real node",
            "-",
            "check Debian packages",
            f"missing: {', '.join(missing)}",
            hint="./dev test installs runc containernetworking-plugins busybox-static socat "
            "iptables conntrack (apt-get)",
        )
    k8s = build.build_kubernetes_node(v["kubernetes"]["version"], progress)
    return NodeTools(
        kubelet=k8s["kubelet"],
        kube_proxy=k8s["kube-proxy"],
        containerd_dir=build.build_containerd(v["containerd"]["version"], progress),
        local_path_provisioner=build.build_local_path_provisioner(
            v["local_path_provisioner"]["version"], progress
        ),
        images=tuple(images.build_node_images()),
    )


def _sh(cmd: Sequence[str | Path], what: str, timeout: float = 60) -> str:
    """Run a set-up command; raise RealNodeError with its output on failure."""
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RealNodeError(f"{what}: {' '.join(map(str, cmd))}: {e}") from e
    if p.returncode != 0:
        raise RealNodeError(
            f"{what}: `{' '.join(map(str, cmd))}` exited {p.returncode}:\n{p.stdout}{p.stderr}"
        )
    return p.stdout


def _used_indexes() -> set[int]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = {int(part.split(".")[2]) for part in out.split() if part.startswith("10.213.")}
    used |= {
        int(d.name.rsplit("-", 1)[1])
        for d in (CGROUP_ROOT / "memory").glob("hubfleet-node-*")
        if d.name.rsplit("-", 1)[1].isdigit()
    }
    return used


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the v2 'unified')."""
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


class RealNode:
    """One real node joined to a running control plane.

    ``server`` is the apiserver URL on host loopback and ``pki`` the control plane's PKI
    directory (its CA signs the node's certificates). After ``start()``: ``name``,
    ``node_ip``, ``pod_cidr``, ``workdir``, ``components`` and ``timings``.
    """

    def __init__(
        self,
        server: str,
        pki: Path,
        tools: NodeTools | None = None,
        *,
        state_file: Path | None = None,
        detached: bool = False,
        progress: Callable[[str], None] | None = None,
        start_timeout: float = 120.0,
    ):
        self.server = server
        self.pki = pki
        self._tools = tools
        self.state_file = state_file
        self.detached = detached
        self.start_timeout = start_timeout
        self._progress = progress or (lambda msg: None)
        self.index: int | None = None
        self.name = ""
        self.workdir: Path | None = None
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self._ssl: ssl.SSLContext | None = None
        self._mounted_nsdir = False
        self._ctr = Path("ctr")

    @staticmethod
    def admit_namespace(api: Any, namespace: str) -> None:
        """Let every pod of `namespace` onto the real node's taint: the namespace's
        ``scheduler.alpha.kubernetes.io/defaultTolerations`` (added to its pods by the
        apiserver's PodTolerationRestriction plugin, as an operator of a cluster with its
        own taints would), and ``REAL_NODE_NAMESPACE_LABEL``. `api`: a kubernetes ApiClient."""
        from kubernetes import client

        toleration = {**NODE_TAINT, "operator": "Equal"}
        body = {
            "metadata": {
                "labels": {REAL_NODE_NAMESPACE_LABEL: "true"},
                "annotations": {
                    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps([toleration])
                },
            }
        }
        client.CoreV1Api(api).patch_namespace(namespace, body)

    # ---- derived names
    @property
    def node_ip(self) -> str:
        return str(ipaddress.ip_network(NODE_NET.format(n=self.index))[2])

    @property
    def host_ip(self) -> str:
        return str(ipaddress.ip_network(NODE_NET.format(n=self.index))[1])

    @property
    def pod_cidr(self) -> str:
        return POD_NET.format(n=self.index)

    @property
    def cgroup_name(self) -> str:
        return f"hubfleet-node-{self.index}"

    @property
    def host_if(self) -> str:
        return f"hfh{self.index}"

    @property
    def node_if(self) -> str:
        return f"hfn{self.index}"

    @property
    def netns(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "ns" / "net"

    @property
    def mntns(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "ns" / "mnt"

    @property
    def containerd_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "containerd" / "containerd.sock"

    def nsenter(self, *cmd: str | Path) -> list[str]:
        """A command line that runs ``cmd`` inside the node's network and mount namespaces."""
        return ["nsenter", f"--net={self.netns}", f"--mount={self.mntns}", "--", *map(str, cmd)]

    def run_in_node(self, *cmd: str | Path, timeout: float = 30) -> str:
        """Run a command inside the node's namespaces and return its stdout."""
        return _sh(self.nsenter(*cmd), "in node", timeout=timeout)

    # ---- context manager
    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- API helper (admin, stdlib only)
    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _create(self, path: str, body: dict) -> None:
        status, resp = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise RealNodeError(f"creating {body['kind']} failed: {status} {resp}")

    # ---- lifecycle
    def start(self) -> RealNode:
        """Start the node; return once it is Ready and kube-proxy has synced."""
        t_start = time.monotonic()
        tools = self._tools or ensure_node_tools(self._progress)
        self.timings["tools"] = time.monotonic() - t_start
        self._ssl = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        self._ssl.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        self.workdir = Path(tempfile.mkdtemp(prefix="hubfleet-node-"))
        os.chmod(self.workdir, 0o700)
        if not self.detached:
            atexit.register(self.stop)
        try:
            self._start(tools)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t_start
        if self.state_file is not None:
            self._write_state()
        return self

    def _start(self, tools: NodeTools) -> None:
        t0 = time.monotonic()
        w = self.workdir
        assert w is not None
        reap_stale_nodes(self._progress)
        free = sorted(set(range(1, 250)) - _used_indexes())
        if not free:
            raise RealNodeError("no free node index (10.213.1-249.0/30 all in use)")
        self.index = free[0]
        self.name = f"hubfleet-real-{self.index}"
        for d in (
            "logs",
            "pki",
            "ns",
            "var-upper",
            "var-work",
            "cni/net.d",
            "cni/ipam",
            "containerd",
            "kubelet",
            "local-path",
        ):
            (w / d).mkdir(parents=True, exist_ok=True)
        self._write_state()  # early: a crashed start can still be torn down from it
        # What reap_stale_nodes needs to tear this node down if its owner dies uncleanly.
        self._write_marker()
        self._make_cgroups()
        self._make_namespaces()
        self._make_network()
        self.timings["namespaces"] = time.monotonic() - t0
        api_port = self.server.rsplit(":", 1)[1]
        self._spawn(
            "apiserver-relay",
            [
                "socat",
                f"TCP-LISTEN:{api_port},bind={RELAY_IP},reuseaddr,reuseport,fork",
                f"TCP:127.0.0.1:{api_port}",
            ],
            in_node=False,
        )
        self._write_pki()
        self._start_containerd(tools)
        self.timings["containerd_ready"] = time.monotonic() - t0
        self._start_kubelet(tools)
        self._wait("node Ready", self._node_ready)
        self.timings["node_ready"] = time.monotonic() - t0
        self._start_kube_proxy(tools)
        self._publish_apiserver()
        self._start_provisioner(tools)
        self._wait("kube-proxy synced", self._proxy_synced)
        self.timings["ready"] = time.monotonic() - t0
        self._progress(f"real node {self.name} Ready in {time.monotonic() - t0:.1f}s")

    # ---- host services for pods
    def relay(self, port: int) -> str:
        """Let pods reach a service listening on host loopback ``port`` (e.g. the test
        Prefect server): a socat relay on ``RELAY_IP:port`` (the host end of the node's
        veth, which pods reach through the node's route) to ``127.0.0.1:port``.
        Returns the address pods use, ``RELAY_IP:port``; the relay is a component of the
        node (stopped by PID with it, or earlier by ``stop_relay``). Only this machine's
        loopback is relayed: nothing outside the machine becomes reachable."""
        name = f"relay-{port}"
        c = self.components.get(name)
        if c is None or not c.alive():
            c = self._spawn(
                name,
                [
                    "socat",
                    f"TCP-LISTEN:{port},bind={RELAY_IP},reuseaddr,fork",
                    f"TCP:127.0.0.1:{port}",
                ],
                in_node=False,
            )

            def listening() -> bool:
                import socket

                with socket.socket() as s:
                    s.settimeout(1)
                    return s.connect_ex((RELAY_IP, port)) == 0

            self._wait(f"relay to 127.0.0.1:{port}", listening)
        return f"{RELAY_IP}:{port}"

    def stop_relay(self, port: int) -> None:
        """Stop the relay ``relay(port)`` started (by its PID); a no-op if there is none."""
        c = self.components.pop(f"relay-{port}", None)
        if c is not None:
            terminate_pids([c])
            self._write_marker()
            if self.state_file is not None:
                self._write_state()

    # ---- cgroups, namespaces, network
    def _make_cgroups(self) -> None:
        for h in _hierarchies():
            for d in (h / self.cgroup_name, h / self.cgroup_name / "system"):
                d.mkdir(exist_ok=True)
                if h.name == "cpuset":  # a new cpuset has no CPUs or memory nodes until set
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        (d / f).write_text((d.parent / f).read_text())

    def _join_cgroup(self) -> None:  # pragma: no cover - runs in the child before exec
        for h in _hierarchies():
            (h / self.cgroup_name / "system" / "cgroup.procs").write_text(str(os.getpid()))

    def _make_namespaces(self) -> None:
        w = self.workdir
        assert w is not None
        nsdir = w / "ns"
        # A namespace can only be bound to a file on a private mount.
        _sh(["mount", "--bind", nsdir, nsdir], "bind ns dir")
        self._mounted_nsdir = True
        _sh(["mount", "--make-private", nsdir], "make ns dir private")
        self.netns.touch()
        self.mntns.touch()
        script = "; ".join(
            [
                "set -e",
                "mount -t tmpfs -o mode=755 tmpfs /run",
                "mkdir /run/.cg",
                "mount --rbind /sys/fs/cgroup /run/.cg",
                # A sysfs of this network namespace (its own /sys/class/net) ...
                "mount -t sysfs sysfs /sys",
                # ... with the host's cgroup hierarchies back in place.
                "mount --move /run/.cg /sys/fs/cgroup",
                "rmdir /run/.cg",
                f"mount -t overlay overlay -o lowerdir=/var,upperdir={w}/var-upper,"
                f"workdir={w}/var-work /var",
            ]
        )
        _sh(
            [
                "unshare",
                f"--net={self.netns}",
                f"--mount={self.mntns}",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            "create node namespaces",
        )

    def _make_network(self) -> None:
        net = ipaddress.ip_network(NODE_NET.format(n=self.index))
        _sh(
            [
                "ip",
                "link",
                "add",
                self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                self.node_if,
                "netns",
                self.netns,
            ],
            "create veth",
        )
        _sh(
            ["ip", "addr", "add", f"{self.host_ip}/{net.prefixlen}", "dev", self.host_if],
            "host veth address",
        )
        _sh(["ip", "addr", "add", f"{RELAY_IP}/32", "dev", self.host_if], "relay address")
        _sh(["ip", "link", "set", self.host_if, "up"], "host veth up")
        # The host reaches pods (the apiserver may need to); nothing else is routed.
        _sh(
            ["ip", "route", "add", self.pod_cidr, "via", self.node_ip, "dev", self.host_if],
            "host route to pods",
        )
        script = "; ".join(
            [
                "set -e",
                "ip link set lo up",
                f"ip addr add {self.node_ip}/{net.prefixlen} dev {self.node_if}",
                f"ip link set {self.node_if} up",
                f"ip route add {RELAY_IP}/32 dev {self.node_if}",
                # Routing between the bridge and the veth, and bridged pod traffic through
                # iptables (kube-proxy's Service rules), in this namespace only.
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.bridge.bridge-nf-call-iptables=1",
            ]
        )
        self.run_in_node("sh", "-c", script)

    # ---- PKI and kubeconfigs
    def _write_pki(self) -> None:
        w = self.workdir
        assert w is not None
        ca_pem = (self.pki / "ca.crt").read_bytes()
        ca = x509.load_pem_x509_certificate(ca_pem)
        ca_key = serialization.load_pem_private_key((self.pki / "ca.key").read_bytes(), None)
        files: dict[str, bytes] = {"ca.crt": ca_pem}
        idents = {
            "kubelet": (f"system:node:{self.name}", "system:nodes"),
            "kube-proxy": ("system:kube-proxy", None),
            # The provisioner creates PVs, helper pods and events across namespaces; in this
            # throwaway cluster it runs as an admin rather than with its own RBAC.
            "local-path-provisioner": ("local-path-provisioner", "system:masters"),
        }
        for ident, (cn, org) in idents.items():
            k = _key()
            files[f"{ident}.crt"] = _pem_cert(
                _cert(_name(cn, org), k, ca.subject, ca_key, client=True)
            )
            files[f"{ident}.key"] = _pem_key(k)
        k = _key()
        files["kubelet-serving.crt"] = _pem_cert(
            _cert(
                _name(self.name),
                k,
                ca.subject,
                ca_key,
                server_names=(self.name,),
                server_ips=(self.node_ip,),
            )
        )
        files["kubelet-serving.key"] = _pem_key(k)
        for name, content in files.items():
            p = w / "pki" / name
            p.write_bytes(content)
            p.chmod(0o600)
        port = self.server.rsplit(":", 1)[1]
        for ident in idents:
            # Inside the node the apiserver is the relay on the host end of the veth; its
            # certificate names "kubernetes", not that address.
            server = (
                self.server if ident == "local-path-provisioner" else f"https://{RELAY_IP}:{port}"
            )
            kc = {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "node",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": server,
                            "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                            "tls-server-name": "kubernetes",
                        },
                    }
                ],
                "users": [
                    {
                        "name": ident,
                        "user": {
                            "client-certificate": str(w / "pki" / f"{ident}.crt"),
                            "client-key": str(w / "pki" / f"{ident}.key"),
                        },
                    }
                ],
                "contexts": [{"name": "node", "context": {"cluster": "c", "user": ident}}],
            }
            p = w / f"{ident}.kubeconfig"
            p.write_text(json.dumps(kc, indent=2))
            p.chmod(0o600)

    # ---- containerd
    def _start_containerd(self, tools: NodeTools) -> None:
        w = self.workdir
        assert w is not None
        pause = next(i.ref for i in tools.images if i.ref == images.PAUSE_IMAGE)
        cni = {
            "cniVersion": "1.0.0",
            "name": "hubfleet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "hfbr0",
                    "isGateway": True,
                    "ipMasq": False,  # no NAT: pods talk only to local addresses
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(w / "cni" / "ipam"),
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        # No default route in pods either: Services and the node subnet
                        # (the apiserver relay) only.
                        "routes": [
                            {"dst": SERVICE_CIDR},
                            {"dst": NODE_NET.format(n=self.index)},
                            {"dst": f"{RELAY_IP}/32"},
                        ],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            ],
        }
        (w / "cni" / "net.d" / "10-hubfleet.conflist").write_text(json.dumps(cni, indent=2))
        cfg = f"""version = 3
root = "{w}/containerd/root"
state = "{w}/containerd/state"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{w}/containerd/containerd.sock.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj cannot be set, and runc
    # dies ("can't get final child's PID from pipe: EOF") unless it is clamped.
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        disable_pause_image_pull = true
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{RUNC}'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{CNI_BIN_DIR}']
      conf_dir = '{w}/cni/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
"""
        (w / "containerd" / "config.toml").write_text(cfg)
        self._spawn(
            "containerd",
            self.nsenter(
                tools.containerd_dir / "containerd", "--config", w / "containerd" / "config.toml"
            ),
            # containerd finds its runc shim by name on PATH: ours first, not Debian's.
            env={"PATH": f"{tools.containerd_dir}:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        ctr = tools.containerd_dir / "ctr"
        self._wait(
            "containerd socket",
            lambda: (
                subprocess.run(
                    [ctr, "--address", self.containerd_socket, "version"], capture_output=True
                ).returncode
                == 0
            ),
        )
        self._ctr = ctr
        for image in tools.images:
            self.import_image(image)

    def import_image(self, image: images.ImageArchive, timeout: float = 300) -> None:
        """Import an OCI archive into the node's containerd (where the kubelet finds it)."""
        _sh(
            self.nsenter(
                self._ctr,
                "--address",
                self.containerd_socket,
                "-n",
                "k8s.io",
                "images",
                "import",
                image.path,
            ),
            f"import {image.ref}",
            timeout=timeout,
        )

    # ---- kubelet
    def _start_kubelet(self, tools: NodeTools) -> None:
        w = self.workdir
        assert w is not None
        pki = w / "pki"
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 here: supported but deprecated; the kubelet refuses it without this.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_name}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            # Only holders of a certificate from the test CA get here (anonymous is off).
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": [NODE_TAINT],
            "clusterDomain": "cluster.local",
            # No cluster DNS and no host resolv.conf in pods: nothing resolves outside names.
            "resolvConf": "",
            "failSwapOn": False,
            "rotateCertificates": False,
            "serializeImagePulls": False,
            # A shared test machine: never evict or garbage-collect for disk or memory.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "0%",
                "imagefs.available": "0%",
                "nodefs.inodesFree": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "5s",
            "localStorageCapacityIsolation": True,
            "podPidsLimit": -1,
            "maxPods": 110,
        }
        (w / "kubelet.yaml").write_text(json.dumps(cfg, indent=2))
        self._spawn(
            "kubelet",
            self.nsenter(
                tools.kubelet,
                f"--config={w / 'kubelet.yaml'}",
                f"--kubeconfig={w / 'kubelet.kubeconfig'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--root-dir={w / 'kubelet'}",
                f"--node-labels={NODE_LABEL}=true",
                "--v=1",
            ),
        )

    def _node_ready(self) -> bool:
        status, body = self.request("GET", f"/api/v1/nodes/{self.name}")
        return status == 200 and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in body.get("status", {}).get("conditions", [])
        )

    # ---- kube-proxy
    def _start_kube_proxy(self, tools: NodeTools) -> None:
        w = self.workdir
        assert w is not None
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(w / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "clusterCIDR": self.pod_cidr,
            "bindAddress": self.node_ip,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the machine-wide conntrack limits alone (they are not per namespace).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "nodePortAddresses": [f"{self.node_ip}/32"],
        }
        (w / "kube-proxy.yaml").write_text(json.dumps(cfg, indent=2))
        self._spawn(
            "kube-proxy", self.nsenter(tools.kube_proxy, f"--config={w / 'kube-proxy.yaml'}")
        )

    def _proxy_synced(self) -> bool:
        # busybox nc, not wget: Debian's static busybox wget segfaults on this machine.
        p = subprocess.run(
            self.nsenter("busybox", "nc", "-w", "2", "127.0.0.1", "10256"),
            input=b"GET /healthz HTTP/1.0\r\n\r\n",
            capture_output=True,
            timeout=10,
        )
        return p.stdout.split(b"\r\n", 1)[0].endswith(b" 200 OK")

    def _publish_apiserver(self) -> None:
        """Give the ``kubernetes`` Service an endpoint pods can reach: the relays' address.
        The control plane runs no endpoint reconciler (its apiserver advertises loopback),
        so without this, pods' in-cluster clients find nothing there."""
        port = int(self.server.rsplit(":", 1)[1])
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        self.request("DELETE", f"{path}/kubernetes-hubfleet-node")
        self._create(
            path,
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kubernetes-hubfleet-node",
                    "labels": {
                        "kubernetes.io/service-name": "kubernetes",
                        "endpointslice.kubernetes.io/managed-by": "hubfleet-testenv",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [RELAY_IP], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
        )

    # ---- local-path-provisioner
    def _start_provisioner(self, tools: NodeTools) -> None:
        w = self.workdir
        assert w is not None
        ns = PROVISIONER_NAMESPACE
        self._create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
        self._create(
            f"/api/v1/namespaces/{ns}/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "local-path-provisioner"},
            },
        )
        # One entry per real node (by node name), kept across nodes of this control plane:
        # a volume lands in the work dir of the node its pod was scheduled to.
        cm_path = f"/api/v1/namespaces/{ns}/configmaps"
        status, old = self.request("GET", f"{cm_path}/local-path-config")
        entries = []
        if status == 200:
            try:
                entries = json.loads(old["data"]["config.json"])["nodePathMap"]
            except (KeyError, TypeError, ValueError):
                entries = []
        entries = [e for e in entries if e.get("node") != self.name]
        entries.append({"node": self.name, "paths": [str(w / "local-path")]})
        config = {"nodePathMap": entries}
        helper_pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "helper-pod"},
            "spec": {
                "containers": [
                    {
                        "name": "helper-pod",
                        "image": images.BUSYBOX_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                    }
                ]
            },
        }
        self.request("DELETE", f"{cm_path}/local-path-config")
        self._create(
            cm_path,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "local-path-config"},
                "data": {
                    "config.json": json.dumps(config),
                    "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                    "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                    "helperPod.yaml": json.dumps(helper_pod),
                },
            },
        )
        self._create(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS},
                "provisioner": PROVISIONER_NAME,
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            },
        )
        self._spawn(
            "local-path-provisioner",
            [
                tools.local_path_provisioner,
                "start",
                f"--kubeconfig={w / 'local-path-provisioner.kubeconfig'}",
                f"--namespace={ns}",
                "--service-account-name=local-path-provisioner",
                "--configmap-name=local-path-config",
                f"--provisioner-name={PROVISIONER_NAME}",
                f"--helper-image={images.BUSYBOX_IMAGE}",
            ],
            in_node=False,
        )

    # ---- processes
    def _spawn(
        self, name: str, argv: list, *, in_node: bool = True, env: dict | None = None
    ) -> Component:
        assert self.workdir is not None
        log = self.workdir / "logs" / f"{name}.log"
        f = log.open("wb")
        pdeath = None if self.detached else pdeathsig_preexec()

        def preexec() -> None:  # pragma: no cover - runs in the child
            if in_node:
                self._join_cgroup()
            if pdeath is not None:
                pdeath()

        # A minimal environment: nothing of the caller's (proxy settings, CA paths, tokens)
        # reaches the node's daemons or, through them, its containers.
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.workdir)}
        try:
            p = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=base | (env or {}),
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            f.close()
        c = Component(name, p.pid, proc_starttime(p.pid), str(log), p)
        self.components[name] = c
        self._write_marker()
        if self.state_file is not None:
            self._write_state()
        return c

    def _write_marker(self) -> None:
        """``<workdir>/node.json``: what reap_stale_nodes needs to find and tear down this
        node if its owner dies uncleanly (index, owner process, daemons)."""
        assert self.workdir is not None
        owner = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())}
        marker = {
            "index": self.index,
            "owner": owner,
            "components": [c.to_json() for c in self.components.values()],
        }
        (self.workdir / "node.json").write_text(json.dumps(marker))

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for c in self.components.values():
                if not c.alive():
                    raise RealNodeError(
                        f"{c.name} exited while waiting for {what}; log tail:\n{log_tail(c.log)}"
                    )
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError, ValueError):
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {c.name}\n{log_tail(c.log, 15)}" for c in self.components.values()
                )
                raise RealNodeError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{logs}"
                )
            time.sleep(0.2)

    # ---- state and teardown
    def _state(self) -> dict:
        return {
            "name": self.name,
            "index": self.index,
            "server": self.server,
            "workdir": str(self.workdir) if self.workdir else None,
            "node_ip": self.node_ip if self.index is not None else None,
            "mounted_nsdir": self._mounted_nsdir,
            "started_at": time.time(),
            "components": [c.to_json() for c in self.components.values()],
        }

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self._state(), indent=2) + "\n")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process of the node by PID, remove its cgroups, namespaces, veth,
        host route and work dir. Safe to call twice and after a failed start."""
        comps = list(self.components.values())[::-1]
        _teardown(self._state(), comps, timeout)
        self.components.clear()
        # Forget the index too: a second stop must not touch a newer node that reused it.
        self.workdir = None
        self.index = None
        self._mounted_nsdir = False
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)


def _cgroup_pids(cgroup_name: str) -> set[int]:
    pids: set[int] = set()
    for h in _hierarchies():
        root = h / cgroup_name
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            try:
                pids |= {int(x) for x in procs.read_text().split()}
            except OSError:
                pass
    return pids


def _teardown(state: dict, comps: list[Component], timeout: float) -> None:
    """Shared by RealNode.stop and stop_node_from_state: every step tolerates a
    half-started node."""
    # Daemons first, by PID: the kubelet before the runtime, so nothing is restarted.
    order = ["kubelet", "kube-proxy", "local-path-provisioner", "containerd", "apiserver-relay"]
    comps = sorted(comps, key=lambda c: order.index(c.name) if c.name in order else 99)
    terminate_pids(comps, timeout=timeout)
    index = state.get("index")
    if index is not None:
        cg = f"hubfleet-node-{index}"
        # What is left in the node's cgroup tree is the node's: runc shims, pause and
        # container processes. Kill those PIDs until the tree is empty.
        deadline = time.monotonic() + timeout
        while (pids := _cgroup_pids(cg)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for h in _hierarchies():
            root = h / cg
            if not root.is_dir():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, root]:
                try:
                    d.rmdir()
                except OSError:
                    pass
        subprocess.run(["ip", "link", "del", f"hfh{index}"], capture_output=True)
    workdir = state.get("workdir")
    if workdir:
        w = Path(workdir)
        nsdir = w / "ns"
        # Unmounting the namespace files drops the last references: the namespaces and
        # every mount made inside the node (overlays, tmpfs, pod volumes) go with them.
        for target in (nsdir / "net", nsdir / "mnt", nsdir):
            if _is_mountpoint(target):
                subprocess.run(["umount", str(target)], capture_output=True)
        if w.name.startswith("hubfleet-node-") and w.is_dir() and not _is_mountpoint(nsdir):
            _save_logs(w)
            shutil.rmtree(w, ignore_errors=True)


def reap_stale_nodes(progress: Callable[[str], None] = lambda m: None) -> list[str]:
    """Tear down nodes whose owner died without stopping them (a SIGKILLed test run).

    The daemons die with their owner (parent-death signal), but containers, the cgroup
    tree, namespaces, veth and work dir stay. A node counts as stale when the process that
    started it is gone (a detached node's starter exits on purpose) and none of its
    recorded daemons is alive (PID and start time). Returns the work dirs removed.
    """
    reaped = []
    for marker in Path(tempfile.gettempdir()).glob("hubfleet-node-*/node.json"):
        try:
            info = json.loads(marker.read_text())
            index = int(info["index"])
            procs = [Component("owner", info["owner"]["pid"], info["owner"]["starttime"], "")]
            procs += [
                Component(c["name"], c["pid"], c["starttime"], c["log"]) for c in info["components"]
            ]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if any(p.alive() for p in procs):
            continue
        progress(f"removing a stale real node (index {index}, {marker.parent})")
        _teardown({"index": index, "workdir": str(marker.parent)}, [], timeout=5)
        reaped.append(str(marker.parent))
    return reaped


def _is_mountpoint(path: Path) -> bool:
    """From mountinfo: os.path.ismount misses a directory bind-mounted onto itself."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4] == str(path) for line in lines)


def _save_logs(workdir: Path) -> None:
    src = workdir / "logs"
    if not src.is_dir():
        return
    dest = build.cache_dir() / "testenv" / "last-node-logs"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(src, dest)
    except OSError:
        pass


# --------------------------------------------------------------------------- cross-process


def default_node_state_file() -> Path:
    """Where ``./dev testenv up`` records the real node (beside the control plane's)."""
    override = os.environ.get("HUBFLEET_TESTENV_STATE")
    base = Path(override).parent if override else build.cache_dir() / "testenv"
    return base / "node.json"


def read_node_state(state_file: Path | None = None) -> dict | None:
    try:
        return json.loads((state_file or default_node_state_file()).read_text())
    except (OSError, ValueError):
        return None


def node_status_from_state(state_file: Path | None = None) -> dict | None:
    state = read_node_state(state_file)
    if state is None:
        return None
    for c in state["components"]:
        c["alive"] = Component(c["name"], c["pid"], c["starttime"], c["log"]).alive()
    return state


def stop_node_from_state(state_file: Path | None = None, timeout: float = 10.0) -> list[str]:
    """Tear down a detached real node from its state file; returns what was running."""
    path = state_file or default_node_state_file()
    state = read_node_state(path)
    if state is None:
        return []
    comps = [Component(c["name"], c["pid"], c["starttime"], c["log"]) for c in state["components"]]
    alive = [c.name for c in comps if c.alive()]
    _teardown(state, comps, timeout)
    path.unlink(missing_ok=True)
    return alive
