"""The health probes: what each level asks a hub (or its cluster).

Each level is a task here (`probe_reachable` ... `probe_k8s`), used by
`flows/check_hub_health.py` (one hub); `probe_shallow` probes many hubs' shallow levels
inside one task for `flows/check_fleet_health.py` (one task run per hub would not scale).
Both follow one retry policy and one stop rule (`hubfleet.health.RETRY`, `blocked`), so
a hub is probed the same way after a deploy, on demand and in a sweep. Tokens travel only in
Authorization headers; nothing here logs, returns or raises a token value.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import requests
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.hub_token import HubOpsToken
from hubfleet.health import (
    HEALTH_USER,
    RETRY,
    DeploymentSeen,
    Level,
    PodSeen,
    ProbeResult,
    PvcSeen,
    blocked,
    judge_k8s,
)
from tasks import jupyterhub_api as api
from tasks.retry import TransientError, transient_retries

T = TypeVar("T")


class SpawnFailed(api.HubApiError):
    """The health user's server did not start, or its kernel did not run the code."""


# --- shallow levels over httpx (many hubs concurrently) -------------------------------


async def acall(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    token: str | None = None,
    timeout: float = api.TIMEOUT,
) -> httpx.Response:
    """One HTTP call; same error classes and messages as `jupyterhub_api.call`."""
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        response = await client.request(method, url, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise TransientError(f"{method} {url}: no answer within {timeout:g}s") from None
    except httpx.TransportError as exc:
        why = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
        raise TransientError(f"{method} {url}: connection failed ({why})") from None
    if response.status_code in api.TRANSIENT_STATUS:
        raise TransientError(
            f"{method} {url}: HTTP {response.status_code} {response.reason_phrase}"
        )
    if response.status_code in (401, 403):
        raise api.TokenRefused(
            f"{method} {url}: token refused (HTTP {response.status_code}); the ops token "
            "was revoked or is wrong: redeploy the hub (or rotate credentials) to issue one",
            response.status_code,
        )
    if response.status_code >= 400:
        raise api.HubApiError(
            f"{method} {url}: HTTP {response.status_code}: {response.text[:200]}",
            response.status_code,
        )
    return response


async def reachable(client: httpx.AsyncClient, url: str, timeout: float = api.TIMEOUT) -> str:
    """GET /hub/health answers 200."""
    await acall(client, "GET", f"{url}/hub/health", timeout=timeout)
    return ""


async def api_version(client: httpx.AsyncClient, url: str, timeout: float = api.TIMEOUT) -> str:
    """GET /hub/api: the JupyterHub version (no token needed)."""
    response = await acall(client, "GET", f"{url}/hub/api", timeout=timeout)
    try:
        return str(response.json()["version"])
    except (ValueError, KeyError, TypeError):
        raise api.HubApiError(f"GET {url}/hub/api: not a JupyterHub API answer") from None


async def auth_whoami(
    client: httpx.AsyncClient, url: str, token: str | None, timeout: float = api.TIMEOUT
) -> str:
    """GET /hub/api/user with the ops token: the name the token belongs to."""
    if token is None:
        raise api.TokenRefused("no ops token stored for this hub; deploy it to create one")
    response = await acall(client, "GET", f"{url}/hub/api/user", token=token, timeout=timeout)
    return str(response.json().get("name"))


async def retrying(call: Callable[[], Awaitable[T]], retries: int = 3, backoff: float = 0.5) -> T:
    """Retry transient failures with exponential backoff and jitter; re-raise the last."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except TransientError:
            if attempt == retries:
                raise
            await asyncio.sleep(backoff * 2**attempt * random.uniform(0.75, 1.25))
    raise AssertionError("unreachable")


async def timed(level: Level, call: Callable[[], Awaitable[str]]) -> ProbeResult:
    """Run one probe; its final failure becomes a failed result with the error's message."""
    start = time.perf_counter()
    try:
        detail = await call()
    except Exception as exc:
        return ProbeResult(level, False, _ms(start), reason=str(exc) or type(exc).__name__)
    return ProbeResult(level, True, _ms(start), detail=detail)


async def probe_shallow(
    client: httpx.AsyncClient,
    url: str,
    token: str | None,
    levels: tuple[Level, ...],
    *,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float = api.TIMEOUT,
) -> list[ProbeResult]:
    """reachable → api → auth (those in `levels`), by the stop rule (`blocked`); each
    retried by the policy (`RETRY`) unless `retries`/`backoff` override it."""
    steps: dict[Level, Callable[[], Awaitable[str]]] = {
        Level.reachable: lambda: reachable(client, url, timeout),
        Level.api: lambda: api_version(client, url, timeout),
        Level.auth: lambda: auth_whoami(client, url, token, timeout),
    }
    results: list[ProbeResult] = []
    for level in levels:
        if level not in steps or blocked(level, results):
            continue
        tries = RETRY[level].retries if retries is None else retries
        wait = RETRY[level].backoff if backoff is None else backoff
        step = steps[level]
        results.append(
            await timed(level, lambda s=step, n=tries, w=wait: retrying(s, n, w))  # type: ignore[misc]
        )
        if not results[-1].ok:
            break  # auth failing ends the shallow levels too
    return results


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


# --- each level as a task (one hub: check_hub_health) ----------------------------------


def _retried(level: Level) -> dict[str, Any]:
    policy = RETRY[level]
    return transient_retries(retries=policy.retries, backoff=policy.backoff)


@task(
    task_run_name="probe-reachable-{url}",
    **_retried(Level.reachable),
    cache_policy=NO_CACHE,
)
async def probe_reachable(url: str) -> float:
    """GET /hub/health (read-only); returns the latency in ms."""
    start = time.perf_counter()
    async with httpx.AsyncClient() as client:
        await reachable(client, url)
    return (time.perf_counter() - start) * 1000


@task(
    task_run_name="probe-api-{url}",
    **_retried(Level.api),
    cache_policy=NO_CACHE,
)
async def probe_api(url: str) -> str:
    """GET /hub/api (read-only): the hub's version."""
    async with httpx.AsyncClient() as client:
        return await api_version(client, url)


@task(
    task_run_name="probe-auth-{url}",
    **_retried(Level.auth),
    cache_policy=NO_CACHE,
)
async def probe_auth(url: str, block: HubOpsToken | None) -> str:
    """GET /hub/api/user with the ops token (read-only): who the token belongs to."""
    token = block.token.get_secret_value() if block else None
    async with httpx.AsyncClient() as client:
        return await auth_whoami(client, url, token)


@task(
    task_run_name="probe-spawn-{url}",
    **_retried(Level.spawn),
    cache_policy=NO_CACHE,
)
async def probe_spawn(url: str, block: HubOpsToken) -> str:
    """Start the health user's server, run Python in a kernel, check the answer.

    Changes: creates the `hubfleet-health` user if missing; starts, then always stops, its
    server (a leftover from an earlier failed probe is stopped first).
    """
    outcome = await asyncio.to_thread(spawn_and_run, url, block.token.get_secret_value())
    return outcome.detail


@task(
    task_run_name="probe-tls-{host}",
    **_retried(Level.tls),
    cache_policy=NO_CACHE,
)
async def probe_tls(host: str, port: int = 443) -> datetime:
    """Read (only) the certificate the hub presents: when it expires."""
    return await asyncio.to_thread(certificate_not_after, host, port)


@task(
    task_run_name="probe-k8s-{namespace}",
    **_retried(Level.k8s),
    cache_policy=NO_CACHE,
)
async def probe_k8s(cluster: str, namespace: str) -> ProbeResult:
    """Read (only) the hub namespace's Deployments, pods and PVCs; judge them."""
    import yaml

    from blocks.cluster_access import ClusterAccess

    access = await ClusterAccess.for_cluster(cluster)
    kubeconfig = yaml.safe_load(access.kubeconfig.get_secret_value())
    start = time.perf_counter()
    seen = await asyncio.to_thread(observe_namespace, kubeconfig, access.context, namespace)
    return judge_k8s(namespace, *seen, latency_ms=round((time.perf_counter() - start) * 1000, 1))


# --- spawn: start a server for the health user, run Python in a kernel, stop it --------


@dataclass(frozen=True)
class SpawnOutcome:
    detail: str
    cleaned_leftover: bool


def spawn_and_run(
    url: str, token: str, user: str = HEALTH_USER, timeout: float = 90.0
) -> SpawnOutcome:
    """Start `user`'s server through the REST API, run code in a kernel, stop the server.

    Changes: creates the health user if missing; starts and always stops its server
    (a leftover server from an earlier failed probe is stopped first).
    """
    deadline = time.monotonic() + timeout
    users = f"{url}/hub/api/users/{user}"
    try:
        api.call("GET", users, token=token)
    except api.HubApiError as exc:
        if exc.status != 404:
            raise
        api.call("POST", users, token=token)
    cleaned = _stop_server(users, token, deadline)
    try:
        try:
            api.call("POST", f"{users}/server", token=token, timeout=30)
        except api.HubApiError as exc:
            # The 500 says nothing; the progress stream keeps the spawner's own error.
            why = _failure_from_progress(users, token) or _spawn_message(exc)
            raise SpawnFailed(f"server for {user} did not start: {why}") from None
        _wait_ready(users, token, deadline)
        server = f"{url}/user/{user}"
        result = _run_code(server, token, deadline)
    finally:
        _stop_server(users, token, deadline)
    return SpawnOutcome(
        f"ran code in a kernel on {user}'s server: {result}"
        + ("; stopped a leftover server first" if cleaned else ""),
        cleaned,
    )


def _spawn_message(exc: Exception) -> str:
    text = str(exc)
    return text.split(": HTTP ", 1)[-1] if ": HTTP " in text else text


def _failure_from_progress(users: str, token: str) -> str:
    """The spawner's error message from the progress stream of a failed spawn, if any."""
    try:
        response = requests.get(
            f"{users}/server/progress",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        )
    except requests.RequestException:
        return ""
    for line in str(response.text).splitlines():
        if line.startswith("data:"):
            event = json.loads(line[5:])
            if event.get("failed"):
                return str(event.get("message", ""))
    return ""


def _stop_server(users: str, token: str, deadline: float) -> bool:
    """Stop the user's default server if it runs or is pending; True if there was one."""
    model = api.call("GET", users, token=token).json()
    if not model.get("servers") and not model.get("pending"):
        return False
    try:
        api.call("DELETE", f"{users}/server", token=token, timeout=30)
    except api.HubApiError as exc:
        if exc.status != 400:  # 400: not running (a race with the spawner's end)
            raise
    while time.monotonic() < deadline:
        model = api.call("GET", users, token=token).json()
        if not model.get("servers") and not model.get("pending"):
            return True
        time.sleep(0.2)
    raise SpawnFailed(f"{users}: server did not stop before the probe's deadline")


def _wait_ready(users: str, token: str, deadline: float) -> None:
    """Follow the spawn's progress stream until it is ready or says why it failed."""
    remaining = max(1.0, deadline - time.monotonic())
    headers = {"Authorization": f"token {token}"}
    try:
        with requests.get(
            f"{users}/server/progress", headers=headers, stream=True, timeout=remaining
        ) as response:
            if response.status_code == 400:  # no longer pending: ready, or failed just now
                return _check_ready(users, token)
            response.raise_for_status()
            for raw in response.iter_lines(decode_unicode=True):
                line = str(raw or "")
                if time.monotonic() > deadline:
                    break
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("failed"):
                    raise SpawnFailed(f"spawner error: {event.get('message', 'spawn failed')}")
                if event.get("ready"):
                    return None
    except requests.RequestException as exc:
        raise TransientError(f"GET {users}/server/progress: {type(exc).__name__}") from None
    return _check_ready(users, token)


def _check_ready(users: str, token: str) -> None:
    server = (api.call("GET", users, token=token).json().get("servers") or {}).get("")
    if not server or not server.get("ready"):
        raise SpawnFailed(f"{users}: server not ready before the probe's deadline")


def _run_code(server: str, token: str, deadline: float) -> str:
    """Start a kernel, execute a computation over its websocket, check it, delete it."""
    import websocket  # websocket-client

    a, b = random.randint(1000, 9999), random.randint(1000, 9999)
    kernel = api.call("POST", f"{server}/api/kernels", token=token, json={}).json()
    try:
        ws_url = server.replace("http", "ws", 1) + f"/api/kernels/{kernel['id']}/channels"
        ws = websocket.create_connection(
            ws_url,
            header=[f"Authorization: token {token}"],
            timeout=max(1.0, deadline - time.monotonic()),
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps(_execute_request(msg_id, f"print({a} * {b})")))
            # The reply (shell) and the output (iopub) race: wait for both the reply
            # and the kernel going idle after our request.
            output, status, idle = "", "", False
            while time.monotonic() < deadline and not (status and idle):
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    output += content.get("text", "")
                elif kind == "error":
                    raise SpawnFailed(
                        f"kernel error: {content.get('ename')}: {content.get('evalue')}"
                    )
                elif kind == "execute_reply":
                    status = content.get("status", "")
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
        finally:
            ws.close()
    finally:
        try:
            api.call("DELETE", f"{server}/api/kernels/{kernel['id']}", token=token)
        except api.HubApiError:
            pass  # the server is stopped next anyway
    if status != "ok" or output.strip() != str(a * b):
        raise SpawnFailed(
            f"kernel answered {output.strip()!r} (status {status or 'none'}), expected {a * b}"
        )
    return f"{a}*{b}={output.strip()}"


def _execute_request(msg_id: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "username": HEALTH_USER,
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.now(UTC).isoformat(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


# --- tls --------------------------------------------------------------------------------


def certificate_not_after(host: str, port: int = 443, timeout: float = api.TIMEOUT) -> datetime:
    """When the certificate `host:port` presents expires (read even if it is untrusted)."""
    from cryptography import x509

    context = ssl.create_default_context()
    # We want the expiry of whatever certificate users get, trusted or not.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise TransientError(f"TLS {host}:{port}: {exc}") from None
    if not der:
        raise api.HubApiError(f"TLS {host}:{port}: no certificate presented")
    return x509.load_der_x509_certificate(der).not_valid_after_utc


# --- k8s --------------------------------------------------------------------------------


def _name(obj: Any) -> str:
    """A Kubernetes object's name (the API's models type metadata as optional)."""
    return str(obj.metadata.name) if obj.metadata else ""


def observe_namespace(
    kubeconfig: dict[str, Any], context: str | None, namespace: str
) -> tuple[list[DeploymentSeen], list[PodSeen], list[PvcSeen]]:
    """Read (only) the namespace's Deployments and DaemonSets (z2jh's hub, proxy,
    user-scheduler and image pullers, as enabled), pods and PVCs.

    The kubeconfig is used from memory: it is never written to disk here.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api_client = config.new_client_from_config_dict(kubeconfig, context=context)
    try:
        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        try:
            deps = apps.list_namespaced_deployment(namespace, _request_timeout=10).items
            sets = apps.list_namespaced_daemon_set(namespace, _request_timeout=10).items
            pods = core.list_namespaced_pod(namespace, _request_timeout=10).items
            pvcs = core.list_namespaced_persistent_volume_claim(namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status in (429, 500, 502, 503, 504):
                raise TransientError(f"kubernetes API: HTTP {exc.status} {exc.reason}") from None
            raise api.HubApiError(f"kubernetes API: HTTP {exc.status} {exc.reason}") from None
        except HTTPError as exc:
            raise TransientError(f"kubernetes API: {type(exc).__name__}") from None
    finally:
        api_client.close()
    now = datetime.now(UTC)
    return (
        [
            DeploymentSeen(
                _name(d),
                d.spec.replicas or 0 if d.spec else 0,
                (d.status.ready_replicas or 0) if d.status else 0,
            )
            for d in deps
        ]
        + [
            DeploymentSeen(
                _name(s),
                (s.status.desired_number_scheduled or 0) if s.status else 0,
                (s.status.number_ready or 0) if s.status else 0,
                kind="daemonset",
            )
            for s in sets
        ],
        [_pod_seen(p, now) for p in pods],
        [
            PvcSeen(_name(p), (p.status.phase if p.status else None) or "Unknown")
            for p in pvcs.items
        ],
    )


def _pod_seen(pod: Any, now: datetime) -> PodSeen:
    created = pod.metadata.creation_timestamp or now
    waiting = tuple(
        s.state.waiting.reason
        for s in (pod.status.container_statuses or [])
        if s.state and s.state.waiting and s.state.waiting.reason
    )
    conditions = tuple(
        f"{c.type}=False {c.reason or ''}: {c.message or ''}".strip()
        for c in (pod.status.conditions or [])
        if c.status == "False" and (c.reason or c.message)
    )
    return PodSeen(
        pod.metadata.name,
        pod.status.phase or "Unknown",
        (now - created).total_seconds(),
        waiting,
        conditions,
    )
