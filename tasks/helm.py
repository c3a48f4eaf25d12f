"""The helm CLI, driven with JSON output, timeouts and honest error classes.

`Helm` runs one helm binary against one kubeconfig with private config/cache dirs (no user
state leaks in or out). Failures are sorted into what may be retried (API unreachable,
rate limits, "another operation is in progress") and what may not (a chart or values
error, a rollout that never got Ready). Known secret strings are removed from every
message before it can reach a log or an exception.

The Prefect tasks at the bottom each change one thing and say so. They are async and run
helm in a thread, so a fleet run's hubs really change side by side (a sync task called
from an async flow would hold the event loop for the whole `--wait`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from hubfleet.charts import find_helm
from hubfleet.errors import HubfleetError
from hubfleet.layers import ValuesInvalid
from tasks.retry import TransientError, transient_retries

T = TypeVar("T")

#: Kubernetes version `helm template`/`lint` assume when no cluster is asked (helm built
#: from source defaults to v1.20, older than our charts' kubeVersion).
TEMPLATE_KUBE_VERSION = "1.30.0"

_TRANSIENT = re.compile(
    r"another operation \(install/upgrade/rollback\) is in progress"
    # `upgrade --install` found no release, then another installer created it first: the
    # retry finds it and upgrades (two clusters of the test fleet share one API server).
    r"|UPGRADE FAILED: release: already exists"
    r"|connection refused|connection reset|i/o timeout|TLS handshake timeout"
    r"|the server is currently unable to handle the request|Too Many Requests"
    r"|etcdserver: request timed out|http2: client connection lost|EOF$",
    re.IGNORECASE | re.MULTILINE,
)
_SCHEMA = "values don't meet the specifications of the schema"


#: Threads for blocking helm/kube calls. `asyncio.to_thread` shares a pool of cpu+4
#: threads, so a fleet run with 40 `helm --wait`s in flight would queue most of them; these
#: threads mostly wait on a subprocess or a socket, so many are cheap.
_BLOCKING_POOL = ThreadPoolExecutor(max_workers=128, thread_name_prefix="hubfleet-blocking")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (helm subprocess, kube API) without holding the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_BLOCKING_POOL, fn, *args)


#: helm commands that never talk to a cluster.
_OFFLINE = ("lint", "template", "package")

#: How helm says a release is not installed; read in one place (`Helm.run`), which raises
#: `ReleaseNotFound` for it.
_NOT_FOUND = "release: not found"


class HelmError(HubfleetError):
    """helm failed for a reason retrying will not fix (chart, values, rollout)."""


class ReleaseNotFound(HelmError):
    """The release is not installed (helm: `release: not found`)."""


class HelmTransient(TransientError):
    """helm failed for a reason that may pass: API unreachable, a release lock, 429."""


@dataclass
class Helm:
    """One helm binary against one cluster (kubeconfig + context)."""

    kubeconfig: Path | None
    context: str | None = None
    binary: Path = field(default_factory=find_helm)
    secrets: Sequence[str] = ()
    timeout: float = 600.0
    #: Global flags of the cluster's client-side API rate limit (`ApiLimits.helm_args`:
    #: `--qps`, `--burst-limit`); empty: helm's own defaults.
    rate_limit: Sequence[str] = ()
    _home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hubfleet-helm-")))

    def close(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        env.update(
            HELM_CONFIG_HOME=str(self._home / "config"),
            HELM_CACHE_HOME=str(self._home / "cache"),
            HELM_DATA_HOME=str(self._home / "data"),
        )
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def run(self, *args: str, timeout: float | None = None) -> str:
        """Run `helm args...`; stdout on success, a classified error otherwise."""
        argv = [str(self.binary), *args]
        if args[0] not in _OFFLINE:
            if self.context:
                argv += ["--kube-context", self.context]
            argv += list(self.rate_limit)
        try:
            proc = subprocess.run(
                argv,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise HelmError(
                f"helm {args[0]} did not finish within {timeout or self.timeout:g}s"
            ) from None
        if proc.returncode == 0:
            return proc.stdout
        message = self.scrub(proc.stderr.strip() or proc.stdout.strip())
        what = f"helm {' '.join(a for a in args[:2])}: {message}"
        if _SCHEMA in message:
            raise ValuesInvalid(f"{what}\nNothing was applied.")
        if _TRANSIENT.search(message):
            raise HelmTransient(what)
        if _NOT_FOUND in message:
            raise ReleaseNotFound(what)
        raise HelmError(what)

    # --- reading --------------------------------------------------------------------------

    def status(self, release: str, namespace: str) -> dict[str, Any] | None:
        """The release's status (JSON), or None if it is not installed."""
        try:
            return json.loads(self.run("status", release, "-n", namespace, "-o", "json"))
        except ReleaseNotFound:
            return None

    def history(self, release: str, namespace: str) -> list[dict[str, Any]]:
        """Revisions, oldest first ([] if never installed)."""
        try:
            out = self.run("history", release, "-n", namespace, "-o", "json", "--max", "50")
        except ReleaseNotFound:
            return []
        return list(json.loads(out))

    def manifest(self, release: str, namespace: str) -> str:
        """What the deployed revision applied ('' if not installed)."""
        try:
            return self.run("get", "manifest", release, "-n", namespace)
        except ReleaseNotFound:
            return ""

    def values(self, release: str, namespace: str) -> dict[str, Any]:
        return json.loads(self.run("get", "values", release, "-n", namespace, "-o", "json")) or {}

    def list_releases(self) -> list[dict[str, Any]]:
        """Every release in every namespace (all states)."""
        return list(json.loads(self.run("list", "-A", "-a", "-o", "json", "--max", "0")))

    # --- rendering ------------------------------------------------------------------------

    def lint(self, chart: Path, values_files: Sequence[Path] = ()) -> str:
        args = ["lint", "--strict", str(chart), "--kube-version", TEMPLATE_KUBE_VERSION]
        for f in values_files:
            args += ["-f", str(f)]
        return self.run(*args)

    def template(self, release: str, chart: Path, namespace: str, values: Sequence[Path]) -> str:
        """Render offline (no cluster): validates the schema, applies nothing."""
        args = ["template", release, str(chart), "-n", namespace]
        args += ["--kube-version", TEMPLATE_KUBE_VERSION]
        for f in values:
            args += ["-f", str(f)]
        return self.run(*args)

    def render_upgrade(
        self, release: str, chart: Path, namespace: str, values: Sequence[Path]
    ) -> str:
        """What `upgrade --install` would apply, rendered by the server: nothing changes."""
        args = ["upgrade", "--install", release, str(chart), "-n", namespace]
        args += ["--dry-run=server", "-o", "json"]
        for f in values:
            args += ["-f", str(f)]
        return str(json.loads(self.run(*args)).get("manifest", ""))

    # --- changing -------------------------------------------------------------------------

    def upgrade(
        self,
        release: str,
        chart: Path,
        namespace: str,
        values: Sequence[Path],
        wait_timeout: str = "5m",
        atomic: bool = True,
    ) -> dict[str, Any]:
        """`upgrade --install --atomic --wait`: Ready, or rolled back to what was there."""
        args = ["upgrade", "--install", release, str(chart), "-n", namespace]
        args += ["--wait", "--timeout", wait_timeout, "-o", "json"]
        if atomic:
            args.append("--atomic")
        for f in values:
            args += ["-f", str(f)]
        return dict(json.loads(self.run(*args, timeout=_seconds(wait_timeout) * 2 + 60)))

    def rollback(
        self, release: str, namespace: str, revision: int | None, wait_timeout: str = "5m"
    ) -> None:
        args = ["rollback", release, *([str(revision)] if revision else []), "-n", namespace]
        self.run(*args, "--wait", "--timeout", wait_timeout, timeout=_seconds(wait_timeout) + 60)

    def uninstall(self, release: str, namespace: str, wait_timeout: str = "5m") -> None:
        self.run(
            "uninstall",
            release,
            "-n",
            namespace,
            "--wait",
            "--timeout",
            wait_timeout,
            timeout=_seconds(wait_timeout) + 60,
        )


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)([smh])", duration):
        total += int(number) * units[unit]
    return total or 300.0


@contextmanager
def helm_for(
    kubeconfig: Path | None,
    context: str | None,
    secrets: Sequence[str] = (),
    rate_limit: Sequence[str] = (),
):
    """A `Helm` whose private home directory is removed afterwards."""
    helm = Helm(kubeconfig, context, secrets=secrets, rate_limit=rate_limit)
    try:
        yield helm
    finally:
        helm.close()


# --- manifest diff (dry runs) ------------------------------------------------------------


def _objects(manifest: str) -> dict[str, dict[str, Any]]:
    objs = {}
    for doc in yaml.safe_load_all(manifest or ""):
        if isinstance(doc, dict) and doc.get("kind"):
            meta = doc.get("metadata") or {}
            objs[f"{doc['kind']}/{meta.get('name')}"] = doc
    return objs


def diff_manifests(old: str, new: str) -> list[dict[str, str]]:
    """Objects added, removed or changed between two manifests. Secrets are compared but
    their content is never shown (only that they changed)."""
    before, after = _objects(old), _objects(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            changes.append({"object": key, "change": "add"})
        elif key not in after:
            changes.append({"object": key, "change": "remove"})
        elif before[key] != after[key]:
            if key.startswith("Secret/"):
                changes.append({"object": key, "change": "change (content hidden)"})
                continue
            fields = sorted(_changed_paths(before[key], after[key]))
            changes.append({"object": key, "change": "change: " + ", ".join(fields[:8])})
    return changes


def _changed_paths(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _changed_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    elif a != b:
        yield prefix or "(whole object)"


# --- Prefect tasks -----------------------------------------------------------------------


@task(
    task_run_name="helm-upgrade-{release}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=2.0),
)
async def helm_upgrade(
    helm: Helm,
    release: str,
    chart: Path,
    namespace: str,
    values: list[Path],
    wait_timeout: str = "5m",
) -> dict[str, Any]:
    """Install or upgrade `release` in `namespace` (--atomic --wait): changes the cluster.
    On a rollout that never gets Ready helm itself restores the previous revision."""
    try:
        return await in_thread(helm.upgrade, release, chart, namespace, values, wait_timeout)
    except (HelmError, HelmTransient) as exc:
        get_run_logger().error("helm upgrade of %s/%s failed: %s", namespace, release, exc)
        raise


@task(
    task_run_name="helm-rollback-{release}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=2.0),
)
async def helm_rollback(helm: Helm, release: str, namespace: str, revision: int | None) -> None:
    """Roll `release` back to `revision` (the previous one if None): changes the cluster."""
    await in_thread(helm.rollback, release, namespace, revision)


@task(
    task_run_name="helm-uninstall-{release}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=2.0),
)
async def helm_uninstall(helm: Helm, release: str, namespace: str) -> None:
    """Uninstall `release` (its resources and history): changes the cluster."""
    await in_thread(helm.uninstall, release, namespace)


@task(
    task_run_name="helm-history-{release}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=1.0),
)
async def helm_history(helm: Helm, release: str, namespace: str) -> list[dict[str, Any]]:
    """Read the release's revisions. Changes nothing."""
    return await in_thread(helm.history, release, namespace)


@task(
    task_run_name="helm-diff-{release}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=1.0),
)
async def helm_diff(
    helm: Helm, release: str, chart: Path, namespace: str, values: list[Path]
) -> list[dict[str, str]]:
    """Render what an upgrade would apply and compare with `helm get manifest`. Changes
    nothing (server-side dry run)."""
    new = await in_thread(helm.render_upgrade, release, chart, namespace, values)
    old = await in_thread(helm.manifest, release, namespace)
    return diff_manifests(old, new)


@task(
    task_run_name="helm-releases",
    cache_policy=NO_CACHE,
    **transient_retries(retries=3, backoff=1.0),
)
async def helm_releases(helm: Helm) -> list[dict[str, Any]]:
    """Every release in the cluster. Changes nothing."""
    return await in_thread(helm.list_releases)
