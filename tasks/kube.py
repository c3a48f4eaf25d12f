"""The Kubernetes API (official `kubernetes` client): namespaces, the ops Secret, rollouts.

Every call goes through a client built from a kubeconfig file (see
`blocks.cluster_access.kubeconfig_file`), held to the cluster's client-side rate limit
(`TokenBucket`, one per cluster per process: cluster.yaml `api_qps`, `api_burst`). API
errors that may pass (5xx, 429, connection trouble) become `TransientError`s so tasks
retry them; anything else is raised as is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prefect import task
from prefect.cache_policies import NO_CACHE

from hubfleet.errors import HubfleetError
from hubfleet.model import DEFAULT_API_BURST, DEFAULT_API_QPS, Cluster
from tasks.helm import in_thread
from tasks.retry import TransientError, transient_retries

#: Labels hubfleet puts on a hub's namespace: how orphans are found.
MANAGED_LABEL = "hubfleet.io/managed"
HUB_LABEL = "hubfleet.io/hub"

T = TypeVar("T")

#: How hubfleet's Kubernetes client names itself to the API server.
USER_AGENT = "hubfleet"


class TokenBucket:
    """A client-side rate limit, as client-go's: `qps` tokens a second, at most `burst`
    saved up; `acquire` blocks (the calling thread) until a token is free. Thread-safe:
    the blocking API calls run in a pool of threads (`tasks.helm.in_thread`)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds callers spent held back, for benchmarks and logs

    def acquire(self) -> None:
        if self.qps <= 0:
            return  # limit off
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1  # reserve now; a negative balance is the wait
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
            self.waited += wait
        if wait:
            time.sleep(wait)


@dataclass(frozen=True)
class ApiLimits:
    """A cluster's client-side API rate limit (cluster.yaml `api_qps`, `api_burst`)."""

    qps: float = DEFAULT_API_QPS
    burst: int = DEFAULT_API_BURST

    @classmethod
    def of(cls, cluster: Cluster) -> ApiLimits:
        return cls(cluster.api_qps, cluster.api_burst)

    def helm_args(self) -> list[str]:
        """helm's global flags for this limit (`--qps -1`: client-go's "no limit")."""
        return [
            "--qps",
            f"{self.qps:g}" if self.qps > 0 else "-1",
            "--burst-limit",
            str(self.burst),
        ]


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def cluster_bucket(cluster: str, limits: ApiLimits) -> TokenBucket:
    """The process's one bucket for `cluster`: every operation on the cluster in this
    process shares it (a new one if the cluster's limits changed)."""
    with _buckets_lock:
        bucket = _buckets.get(cluster)
        if bucket is None or (bucket.qps, bucket.burst) != (limits.qps, limits.burst):
            bucket = _buckets[cluster] = TokenBucket(limits.qps, limits.burst)
        return bucket


class RateLimitedApiClient(client.ApiClient):
    """The official client with a `TokenBucket` in front of every request (the Python
    client has no client-side rate limit of its own)."""

    def __init__(self, configuration: client.Configuration, bucket: TokenBucket | None) -> None:
        super().__init__(configuration=configuration)
        self.bucket = bucket
        # Named in the API server's audit log and metrics, as helm names itself "Helm/...".
        self.user_agent = USER_AGENT

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if self.bucket is not None:
            self.bucket.acquire()
        return super().call_api(*args, **kwargs)


@contextmanager
def kube_client(
    kubeconfig: Path, context: str | None = None, bucket: TokenBucket | None = None
) -> Iterator[client.ApiClient]:
    """An API client for the kubeconfig's `context`, closed afterwards; with `bucket`,
    every request first takes a token from it (see `cluster_bucket`)."""
    configuration = type.__call__(client.Configuration)
    config.load_kube_config(
        config_file=str(kubeconfig), context=context, client_configuration=configuration
    )
    api = RateLimitedApiClient(configuration, bucket)
    try:
        yield api
    finally:
        api.close()


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the API; 429/5xx and connection errors are transient, the rest are not."""
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status in (429, 500, 502, 503, 504):
            raise TransientError(f"kubernetes API {exc.status}: {exc.reason}") from None
        raise
    except urllib3.exceptions.HTTPError as exc:
        raise TransientError(f"kubernetes API unreachable: {exc}") from None


def _ensure_namespace(api: client.ApiClient, name: str, hub: str | None = None) -> bool:
    """Create namespace `name` (labelled as hubfleet's) if missing; True if created."""
    core = client.CoreV1Api(api)
    labels = {MANAGED_LABEL: "true", **({HUB_LABEL: hub} if hub else {})}
    try:
        _call(core.read_namespace, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        _call(core.create_namespace, body)
        return True
    _call(core.patch_namespace, name, {"metadata": {"labels": labels}})
    return False


def namespace_exists(api: client.ApiClient, name: str) -> bool:
    try:
        _call(client.CoreV1Api(api).read_namespace, name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _hub_namespaces(api: client.ApiClient) -> list[str]:
    """Namespaces hubfleet labelled as hub namespaces. Changes nothing."""
    found = _call(client.CoreV1Api(api).list_namespace, label_selector=f"{MANAGED_LABEL}=true")
    items: list[Any] = found.items
    return sorted(ns.metadata.name for ns in items if HUB_LABEL in (ns.metadata.labels or {}))


def _delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete namespace `name` and everything in it: changes the cluster."""
    try:
        _call(client.CoreV1Api(api).delete_namespace, name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _remove_namespace(api: client.ApiClient, name: str, timeout: float) -> None:
    """Delete namespace `name` and wait until it is gone (its finalizers ran)."""
    _delete_namespace(api, name)
    deadline = time.monotonic() + timeout
    while namespace_exists(api, name):
        if time.monotonic() > deadline:
            raise HubfleetError(
                f"namespace {name} still exists {timeout:g}s after its deletion (a finalizer "
                f"waits?). Check `kubectl get ns {name} -o yaml`, then run the operation again."
            )
        time.sleep(1)


def rollout_problems(api: client.ApiClient, namespace: str, release: str) -> list[str]:
    """Why the release's workloads are not fully rolled out and Ready ([] if they are).

    Checks every Deployment of the release (observed generation, updated, available and
    ready replicas) and every pod of it (Ready condition, container restarts).
    """
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    selector = f"release={release}"  # z2jh's labels
    problems = []
    deployments = _call(apps.list_namespaced_deployment, namespace, label_selector=selector)
    if not deployments.items:
        return [f"no Deployments of release {release!r} in namespace {namespace!r}"]
    dep: Any  # the client's models type every field Optional; the API always sets these
    for dep in deployments.items:
        want, st = dep.spec.replicas or 0, dep.status
        if (st.observed_generation or 0) < dep.metadata.generation:
            problems.append(f"deployment {dep.metadata.name}: rollout not observed yet")
        elif (st.updated_replicas or 0) < want or (st.available_replicas or 0) < want:
            problems.append(
                f"deployment {dep.metadata.name}: {st.updated_replicas or 0}/{want} on the new "
                f"revision, {st.available_replicas or 0}/{want} available"
                + (" (paused)" if dep.spec.paused else "")
            )
    pods = _call(core.list_namespaced_pod, namespace, label_selector=selector)
    pod: Any
    for pod in pods.items:
        if pod.metadata.deletion_timestamp:
            continue
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        restarts = sum(int(c.restart_count) for c in pod.status.container_statuses or [])
        if not ready:
            problems.append(f"pod {pod.metadata.name}: not Ready ({pod.status.phase})")
        if restarts:
            problems.append(f"pod {pod.metadata.name}: {restarts} container restart(s)")
    return problems


def wait_rollout(
    api: client.ApiClient, namespace: str, release: str, within: float, every: float = 1.0
) -> list[str]:
    """`rollout_problems`, read again every `every` seconds until there are none or
    `within` seconds have passed; the last read's problems ([] once all is Ready).

    After helm reported success, the Deployments' own status can trail the ReplicaSet
    helm read by a moment; a Deployment helm does not wait for (a paused one, which helm
    counts as ready) never catches up, and is reported when `within` runs out."""
    deadline = time.monotonic() + within
    while True:
        problems = rollout_problems(api, namespace, release)
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(every)


# --- Prefect tasks (async: the blocking client runs in a thread) ----------------------------


@task(task_run_name="ensure-namespace-{name}", cache_policy=NO_CACHE, **transient_retries())
async def ensure_namespace(api: client.ApiClient, name: str, hub: str | None = None) -> bool:
    """Create namespace `name` (labelled as hubfleet's) if missing; True if created."""
    return await in_thread(_ensure_namespace, api, name, hub)


@task(task_run_name="list-hub-namespaces", cache_policy=NO_CACHE, **transient_retries())
async def hub_namespaces(api: client.ApiClient) -> list[str]:
    """Namespaces hubfleet labelled as hub namespaces. Changes nothing."""
    return await in_thread(_hub_namespaces, api)


@task(task_run_name="delete-namespace-{name}", cache_policy=NO_CACHE, **transient_retries())
async def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete namespace `name` and everything in it: changes the cluster."""
    await in_thread(_delete_namespace, api, name)


@task(task_run_name="remove-namespace-{name}", cache_policy=NO_CACHE, **transient_retries())
async def remove_namespace(api: client.ApiClient, name: str, timeout: float = 300) -> None:
    """Delete namespace `name` and everything in it, and wait until it is gone (at most
    `timeout` seconds): changes the cluster."""
    await in_thread(_remove_namespace, api, name, timeout)


@task(task_run_name="ensure-hub-namespace-{hub}", cache_policy=NO_CACHE, **transient_retries())
async def ensure_hub_namespace(api: client.ApiClient, hub: str) -> bool:
    """Create the hub's namespace (labelled as hubfleet's) if it is missing; True if it was
    created."""
    return await in_thread(_ensure_namespace, api, hub, hub)


@task(task_run_name="rollout-status-{release}", cache_policy=NO_CACHE, **transient_retries())
async def rollout_status(
    api: client.ApiClient, namespace: str, release: str, within: float = 0.0
) -> list[str]:
    """Read the rollout state of a release (see `rollout_problems`), waiting up to `within`
    seconds for it to be complete (see `wait_rollout`). Changes nothing."""
    return await in_thread(wait_rollout, api, namespace, release, within)
