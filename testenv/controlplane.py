"""A real, local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods become Running/Ready), on free loopback
ports, in a temp dir. Starts in seconds once the binaries are built (see build.py).

Everything secret (CA, serving and client keys, service-account signing key, the admin
kubeconfig) lives only in the temp dir, which is removed on stop. Processes are stopped by
PID (SIGTERM, then SIGKILL after a timeout), never by name.

Two ways to use it:

* in-process: ``with ControlPlane() as cp: ...`` (the pytest fixture does this). Children
  get PR_SET_PDEATHSIG, so they die with this process even if it is SIGKILLed.
* across processes: ``ControlPlane(state_file=..., detached=True).start()`` leaves the
  processes running and records PIDs in a state file; ``stop_from_state()`` and
  ``status_from_state()`` act on it later (``./dev testenv up | down | status``).
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import build
from ._proc import Component, log_tail, pdeathsig_preexec, proc_starttime, terminate_pids

# Kubernetes service network of the fake cluster; the apiserver's ClusterIP is the first address.
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


class ControlPlaneError(RuntimeError):
    """The control plane failed to start (message carries the failing component's log tail)."""


# --------------------------------------------------------------------------- fake node pools


@dataclass(frozen=True)
class NodePool:
    """A pool of identical fake nodes, labelled like a real cloud node pool."""

    name: str
    count: int
    purpose: str  # hub.jupyter.org/node-purpose: "core" (hub, proxy) or "user" (user servers)
    instance_type: str
    cpu: str  # allocatable, as the cloud reports it after system reservations
    memory: str
    pods: str = "110"
    taints: tuple[dict, ...] = ()


# Like a GKE cluster set up for zero-to-jupyterhub: a small core pool, a tainted user pool
# (user pods tolerate hub.jupyter.org/dedicated=user; the hub and proxy do not).
DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool("core", 2, "core", "n2-highmem-4", cpu="3920m", memory="26Gi"),
    NodePool(
        "user",
        2,
        "user",
        "n2-highmem-8",
        cpu="7910m",
        memory="55Gi",
        taints=({"key": "hub.jupyter.org/dedicated", "value": "user", "effect": "NoSchedule"},),
    ),
)


def node_manifest(pool: NodePool, index: int, zone: str = "us-central1-a") -> dict:
    """A Node object for kwok to manage (it fills in conditions, addresses, heartbeats)."""
    name = f"kwok-{pool.name}-{index}"
    resources = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": pool.pods,
        "ephemeral-storage": "95Gi",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "hub.jupyter.org/node-purpose": pool.purpose,
                "cloud.google.com/gke-nodepool": pool.name,
                "node.kubernetes.io/instance-type": pool.instance_type,
                "topology.kubernetes.io/region": zone.rsplit("-", 1)[0],
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": {"taints": [dict(t) for t in pool.taints]} if pool.taints else {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


# --------------------------------------------------------------------------- PKI


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: generation is ~instant, unlike RSA, and every component accepts it.
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert(
    subject: x509.Name,
    key,
    issuer: x509.Name,
    issuer_key,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
    days: int = 30,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if (server_names or server_ips) else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans = [x509.DNSName(n) for n in server_names] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips
    ]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


# Client identities: the controller-manager and scheduler get their own (RBAC bootstrap
# policies bind system:kube-controller-manager / system:kube-scheduler); the admin and
# kwok (which writes node and pod status for fake nodes) are cluster admins.
CLIENTS = {
    "admin": ("kubernetes-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
    # A cluster admin through RBAC (cluster-admin bound at start), not system:masters: the
    # apiserver's in-flight limits exempt system:masters, and a fleet's deployer on a real
    # cluster is not in it. Tests and benchmarks that measure throttling use this one.
    "deployer": ("testenv-deployer", None),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(count: int) -> list[int]:
    """`count` different free ports: the kernel can hand the same free port out twice in a
    row (seen here: etcd and the apiserver then fought over one port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --------------------------------------------------------------------------- the control plane


def default_state_file() -> Path:
    """Where ``./dev testenv up`` records the running control plane
    (``$HUBFLEET_TESTENV_STATE`` overrides, e.g. for a second, independent one)."""
    override = os.environ.get("HUBFLEET_TESTENV_STATE")
    return Path(override) if override else build.cache_dir() / "testenv" / "controlplane.json"


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    After ``start()``: ``kubeconfig`` (admin kubeconfig path), ``server`` (https URL),
    ``workdir`` (temp dir with certs, data and logs), ``components`` (name -> Component).
    """

    def __init__(
        self,
        tools: dict[str, Path] | None = None,
        *,
        pools: tuple[NodePool, ...] = DEFAULT_POOLS,
        state_file: Path | None = None,
        detached: bool = False,
        progress: Callable[[str], None] | None = None,
        start_timeout: float = 120.0,
        max_requests_inflight: int | None = None,
        max_mutating_requests_inflight: int | None = None,
        audit_log: bool = False,
    ):
        self._tools = tools
        # The apiserver's concurrency limits (None: its defaults, 400 and 200). With
        # priority and fairness off (see _start) these are the plain in-flight limits: a
        # request over them is answered 429 at once. Small values make a throttling
        # apiserver for tests and benchmarks/bench_apiserver.py.
        self.max_requests_inflight = max_requests_inflight
        self.max_mutating_requests_inflight = max_mutating_requests_inflight
        # An audit log of every request's metadata (user agent, verb, response code) in
        # the workdir (`audit_log_path`): who drove which requests and who got a 429.
        self.audit_log = audit_log
        self.pools = pools
        self.state_file = state_file
        self.detached = detached
        self.start_timeout = start_timeout
        self._progress = progress or (lambda msg: None)
        self.workdir: Path | None = None
        self.kubeconfig: Path | None = None
        self.server: str | None = None
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self._ssl: ssl.SSLContext | None = None
        self._atexit_registered = False

    # ---- context manager
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- API helpers (stdlib only: keeps startup fast and this module light)
    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """An admin request to the apiserver; returns (status, parsed JSON or text)."""
        if self.server is None:
            raise ControlPlaneError("control plane not started")
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

    # ---- lifecycle
    def start(self) -> ControlPlane:
        """Start all components and return once fake nodes are Ready and the controllers work."""
        t_start = time.monotonic()
        tools = self._tools or build.ensure_tools(progress=self._progress)
        self.timings["tools"] = time.monotonic() - t_start
        self.workdir = Path(tempfile.mkdtemp(prefix="hubfleet-testenv-"))
        os.chmod(self.workdir, 0o700)
        if not self.detached and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        for attempt in (1, 2):
            try:
                self._start(tools)
                break
            except ControlPlaneError as e:
                self.stop()
                # Free ports are picked before the processes bind them; another process
                # can take one in between. That race is worth exactly one retry.
                if attempt == 2 or "address already in use" not in str(e):
                    raise
                self._progress("port taken during start-up; retrying once")
                self.workdir = Path(tempfile.mkdtemp(prefix="hubfleet-testenv-"))
                os.chmod(self.workdir, 0o700)
            except BaseException:
                self.stop()
                raise
        self.timings["total"] = time.monotonic() - t_start
        if self.state_file is not None:
            self._write_state()
        return self

    def _start(self, tools: dict[str, Path]) -> None:
        t0 = time.monotonic()
        w = self.workdir
        assert w is not None  # set by start()
        pki = w / "pki"
        pki.mkdir()
        (w / "logs").mkdir()
        etcd_port, etcd_peer, api_port = _free_ports(3)
        self.server = f"https://127.0.0.1:{api_port}"

        # PKI: a CA, the apiserver serving cert, one client cert per identity, SA signing key.
        ca_key = _key()
        ca_name = _name("hubfleet-testenv-ca")
        ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
        files = {"ca.crt": _pem_cert(ca), "ca.key": _pem_key(ca_key)}
        api_key = _key()
        files["apiserver.crt"] = _pem_cert(
            _cert(
                _name("kube-apiserver"),
                api_key,
                ca_name,
                ca_key,
                server_names=(
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ),
                server_ips=("127.0.0.1", SERVICE_IP),
            )
        )
        files["apiserver.key"] = _pem_key(api_key)
        sa_key = _key()
        files["sa.key"] = _pem_key(sa_key)
        files["sa.pub"] = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kubeconfigs = {}
        for ident, (cn, org) in CLIENTS.items():
            k = _key()
            crt = _pem_cert(_cert(_name(cn, org), k, ca_name, ca_key, client=True))
            files[f"{ident}.crt"], files[f"{ident}.key"] = crt, _pem_key(k)
            kubeconfigs[ident] = self._kubeconfig(
                files["ca.crt"], crt, files[f"{ident}.key"], ident
            )
        # The apiserver's identity towards kubelets (logs, exec, port-forward on a real node,
        # see node.py); kubelets trust it through their x509 client CA (this CA).
        kc_key = _key()
        files["apiserver-kubelet-client.crt"] = _pem_cert(
            _cert(
                _name("kube-apiserver-kubelet-client", "system:masters"),
                kc_key,
                ca_name,
                ca_key,
                client=True,
            )
        )
        files["apiserver-kubelet-client.key"] = _pem_key(kc_key)
        for name, content in files.items():
            p = pki / name
            p.write_bytes(content)
            p.chmod(0o600)
        for ident, kc in kubeconfigs.items():
            kc_path = w / f"{ident}.kubeconfig"
            kc_path.write_text(kc)
            kc_path.chmod(0o600)
        self.kubeconfig = w / "admin.kubeconfig"
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.timings["pki"] = time.monotonic() - t0

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                tools["etcd"],
                "--name=default",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                # A throwaway test store: durability buys nothing and fsync is slow on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                tools["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=RBAC,Node",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                # Reach a real node's kubelet at its node IP: its name does not resolve here.
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The lease reconciler refuses a loopback advertise address; nothing here needs
                # endpoints for the "kubernetes" Service (no pod really runs).
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                # PodTolerationRestriction: a namespace's
                # `scheduler.alpha.kubernetes.io/defaultTolerations` annotation is added to its
                # pods, as on clusters whose operators taint node pools. Tests use it to let
                # pods hubfleet creates (the export Job's) onto the tainted real node without
                # a test-only field in hubfleet. Inert for namespaces without the annotation.
                "--enable-admission-plugins=NodeRestriction,PodTolerationRestriction",
                "--profiling=false",
                # Faster start on 2 cores; fairness between tenants is irrelevant here.
                "--enable-priority-and-fairness=false",
                *self._inflight_flags(),
            ],
        )
        self._wait(
            "kube-apiserver /readyz",
            lambda: self.request("GET", "/readyz", timeout=2)[0] == 200,
            watch=("etcd", "kube-apiserver"),
        )
        self.timings["apiserver_ready"] = time.monotonic() - t0

        status, body = self.request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "testenv-deployer-cluster-admin"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "testenv-deployer",
                    }
                ],
            },
        )
        if status not in (200, 201, 409):
            raise ControlPlaneError(f"binding the deployer failed: {status} {body}")

        # Nodes exist before kwok starts so it picks them up at once.
        for pool in self.pools:
            for i in range(pool.count):
                status, body = self.request("POST", "/api/v1/nodes", node_manifest(pool, i))
                if status not in (200, 201, 409):
                    raise ControlPlaneError(f"creating fake node failed: {status} {body}")

        self._spawn(
            "kube-controller-manager",
            [
                tools["kube-controller-manager"],
                f"--kubeconfig={w / 'controller-manager.kubeconfig'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=true",
                # Start-up makes ~100 requests (an SA and a token per controller); the default
                # client rate limit (20 qps) alone cost ~5 s of the start time.
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                tools["kube-scheduler"],
                f"--kubeconfig={w / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
            ],
        )
        self._spawn(
            "kwok",
            [
                tools["kwok"],
                f"--kubeconfig={w / 'kwok.kubeconfig'}",
                f"--config={build.kwok_stages_file(self._kwok_version(tools))}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
            ],
        )
        names = [f"kwok-{p.name}-{i}" for p in self.pools for i in range(p.count)]
        self._wait("fake nodes Ready", lambda: self._nodes_ready(names))
        self.timings["nodes_ready"] = time.monotonic() - t0
        # The serviceaccount controller creating "default" proves the controller-manager works;
        # pods cannot be admitted into a namespace before it exists.
        self._wait(
            "default ServiceAccount",
            lambda: (
                self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
        )
        self.timings["controllers_ready"] = time.monotonic() - t0
        self._progress(f"control plane up at {self.server} in {time.monotonic() - t0:.1f}s")

    @property
    def deployer_kubeconfig(self) -> Path | None:
        """A cluster-admin kubeconfig (RBAC) outside system:masters, so the apiserver's
        in-flight limits apply to it as to a real fleet's deployer."""
        return self.workdir / "deployer.kubeconfig" if self.workdir else None

    @property
    def audit_log_path(self) -> Path | None:
        """The audit log (JSON lines), when started with ``audit_log=True``."""
        return self.workdir / "logs" / "audit.log" if self.audit_log and self.workdir else None

    def _inflight_flags(self) -> list[str]:
        flags = []
        if self.audit_log_path is not None:
            policy = self.audit_log_path.parent.parent / "audit-policy.yaml"
            policy.write_text(
                json.dumps(
                    {
                        "apiVersion": "audit.k8s.io/v1",
                        "kind": "Policy",
                        "omitStages": ["RequestReceived"],
                        "rules": [{"level": "Metadata"}],
                    }
                )
            )
            flags += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log_path}",
                "--audit-log-maxsize=0",  # one file, never rotated
                "--audit-log-format=json",
            ]
        if self.max_requests_inflight is not None:
            flags.append(f"--max-requests-inflight={self.max_requests_inflight}")
        if self.max_mutating_requests_inflight is not None:
            flags.append(f"--max-mutating-requests-inflight={self.max_mutating_requests_inflight}")
        return flags

    def metrics(self) -> str:
        """The apiserver's Prometheus metrics (text), read as admin."""
        status, body = self.request("GET", "/metrics", timeout=30)
        if status != 200:
            raise ControlPlaneError(f"GET /metrics answered {status}: {str(body)[:200]}")
        return str(body)

    @staticmethod
    def _kwok_version(tools: dict[str, Path]) -> str:
        return Path(tools["kwok"]).name.removeprefix("kwok-")

    def _nodes_ready(self, names: list[str]) -> bool:
        status, body = self.request("GET", "/api/v1/nodes")
        if status != 200:
            return False
        ready = {
            n["metadata"]["name"]
            for n in body.get("items", [])
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return set(names) <= ready

    def _kubeconfig(self, ca: bytes, crt: bytes, key: bytes, user: str) -> str:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "hubfleet-testenv",
            "clusters": [
                {
                    "name": "hubfleet-testenv",
                    "cluster": {"server": self.server, "certificate-authority-data": b64(ca)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)},
                }
            ],
            "contexts": [
                {
                    "name": "hubfleet-testenv",
                    "context": {"cluster": "hubfleet-testenv", "user": user},
                }
            ],
        }
        return json.dumps(cfg, indent=2)  # JSON is YAML; every client reads it

    def _spawn(self, name: str, argv: list) -> Component:
        assert self.workdir is not None
        log = self.workdir / "logs" / f"{name}.log"
        f = log.open("wb")
        try:
            p = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=None if self.detached else pdeathsig_preexec(),
            )
        finally:
            f.close()
        c = Component(name, p.pid, proc_starttime(p.pid), str(log), p)
        self.components[name] = c
        return c

    def _wait(
        self, what: str, ready: Callable[[], bool], watch: tuple[str, ...] | None = None
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for c in self.components.values():
                if watch is not None and c.name not in watch:
                    continue
                if not c.alive():
                    raise ControlPlaneError(
                        f"{c.name} exited while waiting for {what}; log tail:\n{log_tail(c.log)}"
                    )
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {c.name}\n{log_tail(c.log, 15)}" for c in self.components.values()
                )
                raise ControlPlaneError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{logs}"
                )
            time.sleep(0.1)

    def _write_state(self) -> None:
        assert self.state_file is not None
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "workdir": str(self.workdir),
            "started_at": time.time(),
            "components": [c.to_json() for c in self.components.values()],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process (reverse start order, by PID) and remove the temp dir."""
        comps = list(self.components.values())[::-1]
        terminate_pids(comps, timeout=timeout)
        self.components.clear()
        if self.workdir is not None:
            _save_logs(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)


def _save_logs(workdir: Path) -> None:
    """Keep the component logs of the last run (no secrets in them) for debugging."""
    src = workdir / "logs"
    if not src.is_dir():
        return
    dest = build.cache_dir() / "testenv" / "last-logs"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(src, dest)
    except OSError:
        pass


# --------------------------------------------------------------------------- cross-process control


def read_state(state_file: Path | None = None) -> dict | None:
    """The recorded state of a detached control plane, or None."""
    path = state_file or default_state_file()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status_from_state(state_file: Path | None = None) -> dict | None:
    """State plus liveness per component (PID checked against its recorded start time)."""
    state = read_state(state_file)
    if state is None:
        return None
    for c in state["components"]:
        comp = Component(c["name"], c["pid"], c["starttime"], c["log"])
        c["alive"] = comp.alive()
    return state


def stop_from_state(state_file: Path | None = None, timeout: float = 10.0) -> list[str]:
    """Terminate a detached control plane by the PIDs in its state file; remove its temp dir.

    Returns the names of components that were still running. PIDs whose start time no
    longer matches (reused by another process) are left alone.
    """
    path = state_file or default_state_file()
    state = read_state(path)
    if state is None:
        return []
    comps = [Component(c["name"], c["pid"], c["starttime"], c["log"]) for c in state["components"]]
    alive = [c.name for c in comps if c.alive()]
    terminate_pids(comps[::-1], timeout=timeout)
    workdir = Path(state["workdir"])
    # Only ever delete a directory we created.
    if workdir.name.startswith("hubfleet-testenv-") and workdir.is_dir():
        _save_logs(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    path.unlink(missing_ok=True)
    return alive
