"""A local TCP relay to a pod's port through the Kubernetes API (what `kubectl port-forward` does).

Why: a hub is reachable over the deploy's own credentials long before (or without) any public
address: new clusters with no DNS or ingress yet, private clusters whose only way in is the API
server, CI clusters on a laptop. Hubfleet's health probes then reach the hub's proxy through
127.0.0.1:<local_port>, relayed over the API server's websocket port-forward with the same
kubeconfig credentials a deploy uses: no Service exposure, no extra secret.

Each accepted local connection gets its own port-forward stream and two pump threads copying
bytes both ways; a failing connection is logged and closed without touching the listener.
Nothing here logs credentials: only namespace, pod, port and the API error's reason.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api
from kubernetes.stream import portforward

from hubfleet.errors import HubfleetError

log = logging.getLogger(__name__)


class PortForward:
    """127.0.0.1:<port> relayed to `port` of a Ready pod chosen by label selector in namespace,
    through the Kubernetes API (credentials of `api`, a kubernetes.client.ApiClient)."""

    def __init__(self, api: ApiClient, namespace: str, selector: str, port: int):
        # Own ApiClient on the same Configuration: kubernetes.stream swaps `call_api` on the
        # client for the duration of a call, which must not leak into the caller's requests.
        self._core = CoreV1Api(ApiClient(configuration=api.configuration))
        self.namespace, self.selector, self.port = namespace, selector, port
        self.local_port = 0
        self.pod: str | None = None
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()  # guards _open and _closed
        self._connect_lock = threading.Lock()  # one portforward() at a time (see above)
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def _pick_pod(self) -> str:
        # Any: the client's models type every field Optional; the API always sets these.
        pods: list[Any] = self._core.list_namespaced_pod(
            self.namespace, label_selector=self.selector
        ).items
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if (
                pod.metadata.deletion_timestamp is None
                and pod.status.phase == "Running"
                and conditions.get("Ready") == "True"
            ):
                return pod.metadata.name
        raise HubfleetError(
            f"port-forward: no Ready pod matches selector {self.selector!r} in namespace "
            f"{self.namespace!r} ({len(pods)} matching, none Ready); check "
            f"`kubectl -n {self.namespace} get pods -l {self.selector}`"
        )

    def start(self) -> PortForward:
        self.pod = self._pick_pod()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.local_port = self._listener.getsockname()[1]
        threading.Thread(
            target=self._accept,
            args=(self._listener,),
            name=f"portforward {self.local_port}",
            daemon=True,
        ).start()
        log.info(
            "port-forward 127.0.0.1:%d -> %s/%s:%d",
            self.local_port,
            self.namespace,
            self.pod,
            self.port,
        )
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _connect(self) -> socket.socket:
        with self._connect_lock:
            pf = portforward(
                self._core.connect_get_namespaced_pod_portforward,
                self.pod,
                self.namespace,
                ports=str(self.port),
            )
        return pf.socket(self.port)

    def _stream(self) -> socket.socket:
        """A new port-forward stream to the pod; re-picks the pod once if the old one is gone."""
        try:
            return self._connect()
        except ApiException as e:
            log.warning(
                "port-forward to %s/%s failed (%s); picking a Ready pod again",
                self.namespace,
                self.pod,
                e.reason,
            )
            self.pod = self._pick_pod()
            return self._connect()

    def _relay(self, conn: socket.socket) -> None:
        try:
            remote = self._stream()
        except Exception as e:  # this connection only: the listener keeps accepting
            log.warning("port-forward connection dropped: %s", getattr(e, "reason", None) or e)
            conn.close()
            return
        with self._lock:
            if self._closed:
                remote.close()
                conn.close()
                return
            self._open.update((conn, remote))
        back = threading.Thread(target=self._pump, args=(remote, conn), daemon=True)
        back.start()
        self._pump(conn, remote)
        back.join()
        with self._lock:
            self._open.difference_update((conn, remote))
        remote.close()
        conn.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # either side reset or closed by close(): end this direction
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the EOF on; the other pump ends in turn
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sockets, self._open = list(self._open), set()
        for s in ([self._listener] if self._listener else []) + sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
            except OSError:
                pass
            s.close()
        self._core.api_client.close()

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
