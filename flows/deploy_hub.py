"""deploy_hub: bring one hub to what the fleet says, prove it healthy, or put it back.

Runbook, Kubernetes providers (gcp, aws, azure, kubeconfig):
  1. layer the hub's values and check them against the chart's schema (nothing applied yet)
  2. dry run: render with the server and show what would change (Secrets only as "changed")
  3. take the hub's lock; ensure its namespace and ops Secret
  4. `helm upgrade --install --atomic --wait`: a rollout that never gets Ready is undone by helm
  5. health gate (see `health_gate`); on failure roll back to the previous revision and fail

The local provider follows the same contract with processes: the previous config is kept,
and a hub that fails to start or is down after the deploy is restarted with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cluster_access import ClusterAccess
from flows.check_hub_health import check_hub_health
from flows.operation import HubOperation, begin_hub
from flows.parameters import HelmWait, LockWait
from hubfleet.auth import hub_config as auth_hub_config
from hubfleet.auth import version_values
from hubfleet.charts import hub_chart, release_version
from hubfleet.errors import HubfleetError
from hubfleet.health import Verdict
from hubfleet.layers import Layer, merge_values
from hubfleet.localhub import hub_config_from_values
from hubfleet.model import Fleet, Provider
from hubfleet.results import HubDeployed, HubHealth
from hubfleet.values import (
    hub_layers,
    hub_schema,
    local_values,
    needs_auth,
    secret_values_file,
    validate_layers,
)
from tasks import helm as helm_tasks
from tasks import kube
from tasks.cluster_session import hub_session
from tasks.helm import in_thread
from tasks.hub_access import canonical_url, hub_endpoint
from tasks.hub_credentials import ensure_ops_service, kube_minter, local_minter
from tasks.local_hub import (
    LocalHubError,
    LocalPlan,
    keep_previous_config,
    local_hub,
    plan_local_hub,
    rollback_local_hub,
    start_local_hub,
)
from tasks.locks import ensure_concurrency_limits_once, hub_lock
from tasks.oauth import load_oauth_client, local_env, secret_version, write_oauth_secret
from tasks.retry import transient_retries

Gate = Literal["auto", "health", "rollout", "none"]


class HubDeployFailed(HubfleetError):
    """The deploy did not leave the hub healthy, and there was nothing to roll back to (or
    helm's --atomic undid its own upgrade); the message says why."""


class HubRolledBack(HubDeployFailed):
    """The new revision failed its health gate and the hub was rolled back to the previous
    one; the message says from which revision to which."""


def check_hub_values(fleet: Fleet, cluster: str, hub: str) -> None:
    """Read and check a hub's values as its deploy will, before anything runs: every
    values file parsed (`file:line` problems), and on Helm providers the merged values
    against the schema of the chart the hub gets. Raises `ValuesInvalid`."""
    spec = fleet.cluster(cluster).hub(hub)
    refuse_open_prod_hub(fleet, cluster, hub)
    if fleet.cluster(cluster).provider is Provider.local:
        local_values(fleet, cluster, spec)  # local hubs apply the files, not the chart
        return
    validate_layers(hub_layers(fleet, cluster, spec), hub_schema(fleet, spec))


class LoginRequired(HubfleetError):
    """A prod hub anyone could log in to (hubfleet.auth.needs_auth); nothing was deployed."""


def refuse_open_prod_hub(fleet: Fleet, cluster: str, hub: str) -> None:
    """Raise `LoginRequired` (saying what to add) for a prod hub without a login."""
    why = needs_auth(fleet, cluster, fleet.cluster(cluster).hub(hub))
    if why is not None:
        raise LoginRequired(f"{why}. Nothing was deployed.")


@contextmanager
def helm_values_files(layers: list[Layer]) -> Iterator[list[Path]]:
    """The layers as files for helm, in order. Chart defaults are helm's own; layers that
    are not files (what the fleet says, secret values) go to 0600 temp files, removed after."""
    with ExitStack() as stack:
        files = []
        for layer in layers[1:]:
            files.append(layer.path or stack.enter_context(secret_values_file(layer.values)))
        yield files


# --- the health gate ---------------------------------------------------------------------


async def hub_health(op: HubOperation) -> HubHealth:
    """The hub-level verdict of a freshly deployed Kubernetes hub: its ops token made sure
    of first (minted in the hub pod on a first deploy, or when the stored one is refused or
    near its expiry), then the `check_hub_health` flow (a subflow run in the history)."""
    cluster, hub = op.cluster.name, op.hub.name
    try:
        async with (
            hub_session(cluster, hub) as session,
            hub_endpoint(op.fleet, cluster, hub) as url,
        ):
            assert url is not None
            minter = kube_minter(session.api, hub)
            await ensure_ops_service(
                cluster, hub, minter, url, canonical_url(op.fleet, cluster, hub)
            )
    except Exception as exc:  # a hub that cannot issue its ops token is not healthy
        return HubHealth(
            hub=op.target,
            url=None,
            depth="shallow",
            verdict=Verdict.down,
            level="auth",
            reason=f"ops token: {type(exc).__name__}: {exc}",
        )
    return await check_hub_health(cluster, hub, operator=op.operator)


#: How long the readiness check waits, after helm's success, for every Deployment of the
#: release to be rolled out and every pod Ready (see `kube.wait_rollout`).
READY_WITHIN_S = 15.0


async def health_gate(op: HubOperation, gate: Gate, api: Any, namespace: str) -> str | None:
    """Why the freshly deployed hub must be rolled back, or None if it passes.

    Two layers, because helm's success is not proof (`--wait` saw pods Ready once; it
    counts a paused Deployment as ready; a hub that crashed since is not Ready):
    - rollout (Kubernetes, through the API): every Deployment of the release is on its new
      generation with all replicas available, and every pod is Ready with no restarts,
      within READY_WITHIN_S. Every gate runs it, `none` included: a hub whose pods are
      not Ready is never reported deployed.
    - health: `check_hub_health` (reachable → api → auth ...) must not say "down".

    `auto` means both for real clusters. `rollout` skips the HTTP probes: for clusters whose
    hubs are not reachable from where the flow runs (CI, the kwok test cluster, where pods
    are fake and nothing answers behind a hub's domain); `none` skips them too (the hub's
    health is then "unchecked"). Tests inject a hub-level failure by replacing
    `hub_health`, which keeps helm, Kubernetes and the rollback real.
    """
    logger = get_run_logger()
    problems = await kube.rollout_status(api, namespace, op.hub.name, READY_WITHIN_S)
    if problems:
        return "rollout: helm reported success, but " + "; ".join(problems)
    if gate in ("rollout", "none"):
        return None
    report = await hub_health(op)
    logger.info("%s: health %s (%s)", op.target, report.verdict, report.reason)
    if report.down:
        return f"health check: down ({report.reason})"
    return None


# --- the flow ----------------------------------------------------------------------------


@task(task_run_name="prepare-hub-{hub}", cache_policy=NO_CACHE, **transient_retries())
async def prepare_hub(api: Any, helm: helm_tasks.Helm, hub: str) -> list[dict[str, Any]]:
    """Before the upgrade, in one task run (each is several server writes, and a fleet run
    has thousands): make sure the hub's namespace exists (labelled as hubfleet's), and read
    the release's helm history. Both idempotent, so retried on transient errors."""
    await in_thread(kube._ensure_namespace, api, hub, hub)
    return await in_thread(helm.history, hub, hub)


@flow(name="deploy_hub", flow_run_name="deploy_hub {cluster}/{hub}")
async def deploy_hub(
    cluster: str,
    hub: str,
    dry_run: bool = False,
    operator: str | None = None,
    gate: Gate = "auto",
    wait_timeout: HelmWait = "5m",
    lock_timeout: LockWait = None,
    fleet_slot: bool = False,
) -> HubDeployed:
    """Deploy or update one hub; with dry_run, only report what would change.

    gate: post-deploy health gate (`auto`, `health`, `rollout` or `none`; see health_gate;
      every gate checks that the release's pods are Ready).
    wait_timeout: how long helm waits for the rollout before undoing it.
    lock_timeout: seconds to wait for another operation on this hub (None: tasks.locks.LOCK_WAIT).
    fleet_slot: also take one of the cluster's `parallelism` slots (set by deploy_fleet).
    """
    op = await begin_hub("deploy_hub", cluster, hub, operator)
    if op.cluster.provider is Provider.local:
        return await _deploy_local(op, dry_run, lock_timeout, fleet_slot)
    return await _deploy_helm(op, dry_run, gate, wait_timeout, lock_timeout, fleet_slot)


async def _deploy_helm(
    op: HubOperation,
    dry_run: bool,
    gate: Gate,
    wait_timeout: str,
    lock_timeout: float | None,
    fleet_slot: bool,
) -> HubDeployed:
    logger = get_run_logger()
    cluster, hub = op.cluster.name, op.hub.name
    refuse_open_prod_hub(op.fleet, cluster, hub)
    await ClusterAccess.for_cluster(cluster)  # none: ProviderNotReady, before anything else
    oauth = await load_oauth_client(cluster, op.hub)  # `auth:` without its secret: refused
    version = op.hub.chart_version or op.fleet.settings.chart_version

    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(hub_session(cluster, hub))
        layers = hub_layers(op.fleet, cluster, op.hub, session.secret_values)
        if oauth is not None:
            # Restarts the hub when the stored client secret changes (the annotation is a
            # time, not the secret); the secret itself helm is scrubbed of (hub_session).
            version_layer = version_values(secret_version(oauth))
            layers.insert(2, Layer("hubfleet: oauth client version", version_layer))
        validate_layers(layers, hub_schema(op.fleet, op.hub))  # before anything changes
        chart = await in_thread(hub_chart, version, op.fleet.settings.chart_repository)
        helm, api = session.helm, session.api
        files = stack.enter_context(helm_values_files(layers))

        if dry_run:
            exists = await in_thread(kube.namespace_exists, api, hub)
            if exists:
                changes = await helm_tasks.helm_diff(helm, hub, chart, hub, files)
            else:
                rendered = await in_thread(helm.template, hub, chart, hub, files)
                changes = helm_tasks.diff_manifests("", rendered)
            if oauth is not None:  # written through the API, outside helm's release
                changes.append(
                    {"object": "Secret/hubfleet-oauth", "change": "set (content hidden)"}
                )
            await _artifact(op, f"Dry run: deploy {op.target} (chart {version})", changes)
            return HubDeployed(
                hub=op.target,
                action="upgrade" if exists else "install",
                dry_run=True,
                changes=changes,
                to_version=version,
            )

        await ensure_concurrency_limits_once(op.fleet)
        async with hub_lock(cluster, hub, timeout=lock_timeout, fleet_slot=fleet_slot):
            if oauth is not None:
                await kube.ensure_hub_namespace(api, hub)
                await write_oauth_secret(api, hub, oauth)
                before = await helm_tasks.helm_history(helm, hub, hub)
            else:
                before = await prepare_hub(api, helm, hub)
            deployed = [r for r in before if r["status"] == "deployed"]
            previous = deployed[-1] if deployed else None
            from_version = _chart_version(previous)
            started = time.monotonic()
            try:
                release = await helm_tasks.helm_upgrade(helm, hub, chart, hub, files, wait_timeout)
            except (helm_tasks.HelmError, helm_tasks.HelmTransient) as exc:
                after = await helm_tasks.helm_history(helm, hub, hub)
                now = _chart_version(next((r for r in after if r["status"] == "deployed"), None))
                reason = f"helm upgrade failed and --atomic undid it (now on {now}): {exc}"
                await _artifact(op, f"Deploy of {op.target} FAILED", [], reason)
                raise HubDeployFailed(f"{op.target}: {reason}") from None
            revision = int(release["version"])
            why = await health_gate(op, gate, api, hub)
            if why is not None:
                logger.error("%s failed the health gate: %s", op.target, why)
                if previous is None:
                    reason = f"failed the health gate ({why}); no previous revision to roll back to"
                    await _artifact(op, f"Deploy of {op.target} FAILED", [], reason)
                    raise HubDeployFailed(f"{op.target}: {reason}")
                await helm_tasks.helm_rollback(helm, hub, hub, int(previous["revision"]))
                reason = (
                    f"failed the health gate ({why}); rolled back automatically from "
                    f"revision {revision} to revision {previous['revision']} ({from_version})"
                )
                await _artifact(op, f"Deploy of {op.target} ROLLED BACK", [], reason)
                raise HubRolledBack(f"{op.target}: {reason}")
    duration = round(time.monotonic() - started, 1)
    await _artifact(
        op,
        f"Deployed {op.target}: revision {revision}, chart {from_version or 'new'} → {version}",
        [],
    )
    return HubDeployed(
        hub=op.target,
        action="install" if previous is None else "upgrade",
        revision=revision,
        from_version=from_version,
        to_version=version,
        duration_s=duration,
        health="healthy" if gate != "none" else "unchecked",
    )


def _chart_version(revision: dict[str, Any] | None) -> str | None:
    """The z2jh version of a revision in helm's history (see `release_version`)."""
    return release_version(str(revision.get("chart", ""))) if revision else None


async def _artifact(
    op: HubOperation, title: str, changes: list[dict[str, str]], why: str = ""
) -> None:
    rows = "\n".join(f"| {c['object']} | {c['change']} |" for c in changes)
    table = f"| object | change |\n|---|---|\n{rows}\n" if changes else ""
    await acreate_markdown_artifact(
        key=f"deploy-{op.cluster.name}-{op.hub.name}",
        markdown=f"# {title}\n\n{why}\n\n{table}\noperator: {op.operator}, "
        f"fleet revision: {op.revision}\n",
        description=title,
    )


async def _deploy_local(
    op: HubOperation, dry_run: bool, lock_timeout: float | None, fleet_slot: bool
) -> HubDeployed:
    logger = get_run_logger()
    cluster, hub = op.cluster.name, op.hub.name
    values = local_values(op.fleet, cluster, op.hub)  # files and the use case's preset
    local = local_hub(op.fleet, cluster, hub)
    oauth = await load_oauth_client(cluster, op.hub)
    config = hub_config_from_values(values)
    if op.hub.auth is not None:  # under the values' own hub.config, as on Kubernetes
        config = merge_values(auth_hub_config(op.hub.auth, None), config)
    plan = plan_local_hub(local, config)
    if oauth is not None:  # a new client secret restarts the hub (the line holds a time)
        text = f"{plan.config}# login client secret stored {secret_version(oauth)}\n"
        plan = LocalPlan(local.plan(text), text, plan.ports)
    secret_env = local_env(oauth)
    logger.info("%s: %s", op.target, plan.action)
    if dry_run:
        await acreate_markdown_artifact(
            key=f"deploy-{cluster}-{hub}",
            markdown=f"# Dry run: deploy {op.target}\n\nWould **{plan.action}** the hub.\n\n"
            f"```python\n{plan.config}\n```\n",
            description=f"dry run: would {plan.action} {op.target}",
        )
        return HubDeployed(hub=op.target, action=plan.action, dry_run=True)

    await ensure_concurrency_limits_once(op.fleet)
    previous = None
    async with hub_lock(cluster, hub, timeout=lock_timeout, fleet_slot=fleet_slot):
        if plan.action == "unchanged":
            running = local.state()
        else:
            previous = keep_previous_config(local)
            try:
                running = start_local_hub(local, plan, secret_env)
            except LocalHubError as exc:
                restored = rollback_local_hub(local, previous, secret_env) if previous else None
                raise (HubRolledBack if restored else HubDeployFailed)(
                    f"{op.target} did not start with the new config ({exc}); "
                    + ("restarted with the previous config" if restored else "nothing to restore")
                ) from None
        assert running is not None  # "unchanged" means it is running
        url = running.url
        try:
            token = await ensure_ops_service(cluster, hub, local_minter(local), url)
            health = await check_hub_health(cluster, hub, operator=op.operator)
            why = health.reason if health.down else None
        except Exception as exc:  # the new hub died between its start and the gate
            if plan.action == "unchanged" or not previous:
                raise
            why = f"{type(exc).__name__}: {exc}"
        if why is not None and plan.action != "unchanged" and previous:
            rollback_local_hub(local, previous, secret_env)
            raise HubRolledBack(
                f"{op.target} is down after deploy ({why}); "
                "rolled back automatically to the previous config"
            )
    await acreate_markdown_artifact(
        key=f"deploy-{cluster}-{hub}",
        markdown=f"# Deployed {op.target}\n\n| | |\n|---|---|\n| action | {plan.action} |\n"
        f"| url | {url} |\n| ops token | {token} |\n| health | {health.verdict} |\n"
        f"| operator | {op.operator} |\n| fleet revision | {op.revision} |\n",
        description=f"deploy {op.target}: {plan.action}, {health.verdict}",
    )
    if health.down:
        raise HubDeployFailed(f"{op.target} is down after deploy: {health.reason}")
    return HubDeployed(hub=op.target, action=plan.action, url=url, health=str(health.verdict))
