"""rotate_credentials: replace every credential in scope that is older than its policy.

Runbook: read the inventory -> plan what is due -> for each credential (one child run,
under its hub's or cluster's lock): create new -> store -> verify new -> switch consumers
-> revoke old -> verify old is refused; any failure before the revocation rolls back.
One failing credential never stops the others; the run fails at the end if any failed.

Hub secrets (proxy auth token, cookie secret) are rotated only when the scope asks for
them ('hub-secret:<cluster>/<hub>' or 'kind:hub-secret'): the hub is redeployed and every
user must log in again, which the run says up front (log and plan artifact). A hub's
secrets are rotated together, in one child run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.operation import begin_cluster, begin_fleet, begin_hub, current_fleet
from flows.parameters import MaxAge
from hubfleet.credentials import (
    HUB_SECRET_WARNING,
    CredentialKind,
    CredentialRecord,
    RotationPlan,
    format_age,
    parse_scope,
    plan_rotation,
)
from hubfleet.errors import HubfleetError
from hubfleet.results import CredentialsRotated, Rotated, RotationFailure
from tasks.credential_inventory import collect_inventory
from tasks.locks import cluster_lock, ensure_concurrency_limits, hub_lock
from tasks.rotation import RotationFailed, rotate
from tasks.rotators import rotator_for


class RotationsFailed(HubfleetError):
    """Some credentials could not be rotated; each was rolled back or is named."""


@flow(name="rotate_credentials", flow_run_name="rotate_credentials {scope}")
async def rotate_credentials(
    scope: str = "all",
    max_age: MaxAge = None,
    dry_run: bool = False,
    operator: str | None = None,
) -> CredentialsRotated:
    """Rotate the credentials in `scope` ('all', 'cluster:<c>', 'hub:<c>/<h>', 'kind:<k>',
    'hub-secret:<c>/<h>') older than `max_age` (default: each kind's policy); with dry_run,
    only show the plan. Hub secrets only when the scope names them (see the module doc)."""
    fleet = current_fleet()
    target = parse_scope(scope, fleet)
    clusters = [target.cluster] if target.cluster else [c.name for c in fleet.clusters]
    hub_tag = (f"hub:{target.cluster}/{target.hub}",) if target.hub else ()
    # A `cluster:` tag for every cluster it may touch, `hub:` for a hub's scope.
    op = await begin_fleet("rotate_credentials", operator, clusters, hub_tag, fleet=fleet)
    fleet, who = op.fleet, op.operator

    records = await collect_inventory(fleet)
    plan = plan_rotation(records, target, datetime.now(UTC), max_age)
    logger = get_run_logger()
    hub_secrets = hub_secret_owners(plan)
    warning = _hub_secret_warning(hub_secrets)
    if warning:
        logger.warning("%s", warning)
    left = sorted({r.owner for r, _ in plan.skipped if r.kind is CredentialKind.hub_secret})
    if left:
        logger.info(
            "hub secrets of %s not rotated: rotate on request only ('hub-secret:<cluster>/<hub>'"
            " or 'kind:hub-secret'), because %s",
            ", ".join(left),
            HUB_SECRET_WARNING,
        )
    await _plan_artifact(plan, scope, dry_run, warning)
    todo = _one_per_rotation(plan.rotate)
    if dry_run:
        return CredentialsRotated(
            scope=scope,
            dry_run=True,
            would_rotate=[_name(r) for r in todo],
            hub_secrets=hub_secrets,
            warning=warning,
        )

    await ensure_concurrency_limits(fleet)
    rotated: list[Rotated] = []
    failed: list[RotationFailure] = []
    for record in todo:
        try:
            rotated.append(await rotate_credential(record.kind, record.cluster, record.hub, who))
        except Exception as exc:  # one credential's failure never stops the others
            failed.append(RotationFailure(credential=_name(record), error=str(exc)))
    await _result_artifact(rotated, failed)
    if failed:
        raise RotationsFailed(
            f"{len(failed)} of {len(todo)} rotation(s) failed: "
            + "; ".join(f"{f.credential}: {f.error}" for f in failed)
        )
    return CredentialsRotated(
        scope=scope,
        rotated=rotated,
        skipped=len(plan.skipped),
        hub_secrets=hub_secrets,
        warning=warning,
    )


@flow(
    name="rotate_credential",
    flow_run_name="rotate_credential {kind} {cluster}/{hub}",
)
async def rotate_credential(
    kind: CredentialKind, cluster: str, hub: str | None = None, operator: str | None = None
) -> Rotated:
    """Rotate one credential now by the protocol (tasks/rotation.py), holding its lock."""
    op = await (
        begin_hub("rotate_credentials", cluster, hub, operator)
        if hub
        else begin_cluster("rotate_credentials", cluster, operator)
    )
    lock = hub_lock(cluster, hub) if hub else cluster_lock(cluster)
    # The rotator's endpoint (a port-forward to a Kubernetes hub) stays open for the whole
    # rotation, revocation and its check included.
    async with lock, rotator_for(op.fleet, kind, cluster, hub) as rotator:
        try:
            done = await rotate(rotator)
        except RotationFailed as exc:
            await acreate_markdown_artifact(
                key=f"rotation-{rotator.label}".lower()[:100],
                markdown=f"# Rotation of {kind} for {rotator.owner} FAILED\n\n{exc}\n\n"
                "## Rolled back\n\n" + "\n".join(f"- {step}" for step in exc.rolled_back),
                description=f"{kind} {rotator.owner}: failed, rolled back",
            )
            raise
    get_run_logger().info("rotated %s for %s", kind, rotator.owner)
    return done


def _name(record: CredentialRecord) -> str:
    return f"{record.kind} {record.owner}"


def _one_per_rotation(records: list[CredentialRecord]) -> list[CredentialRecord]:
    """One record per rotation: a hub's secrets (proxy token, cookie secret) rotate together."""
    seen, unique = set(), []
    for record in records:
        key = (record.kind, record.cluster, record.hub)
        if record.kind is not CredentialKind.hub_secret or key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def hub_secret_owners(plan: RotationPlan) -> list[str]:
    """The hubs whose secrets this plan rotates (cluster/hub), in plan order."""
    owners = [r.owner for r in plan.rotate if r.kind is CredentialKind.hub_secret]
    return list(dict.fromkeys(owners))


def _hub_secret_warning(owners: list[str]) -> str:
    if not owners:
        return ""
    return f"rotating hub secrets of {', '.join(owners)}: {HUB_SECRET_WARNING}"


async def _plan_artifact(plan: RotationPlan, scope: str, dry_run: bool, warning: str) -> None:
    now = datetime.now(UTC)
    rows = [
        f"| {r.kind} | {r.owner} | {r.ident} | {format_age(r.age(now))} | rotate |"
        for r in plan.rotate
    ] + [
        f"| {r.kind} | {r.owner} | {r.ident} | {format_age(r.age(now))} | skip: {why} |"
        for r, why in plan.skipped
    ]
    title = "Dry run: would rotate" if dry_run else "Rotation plan"
    loud = f"**WARNING: {warning}.**\n\n" if warning else ""
    await acreate_markdown_artifact(
        key="rotation-plan",
        markdown=f"# {title} ({scope})\n\n{loud}| kind | owner | id | age | action |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
        description=f"{len(plan.rotate)} to rotate, {len(plan.skipped)} skipped",
    )


async def _result_artifact(rotated: list[Rotated], failed: list[RotationFailure]) -> None:
    rows = [f"| {r.kind} | {r.owner} | {r.old} | {r.new} | ok |" for r in rotated]
    rows += [f"| {f.credential} | | | | FAILED: {f.error} |" for f in failed]
    await acreate_markdown_artifact(
        key="rotation-result",
        markdown="# Rotation result\n\n| kind | owner | old | new | result |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
        description=f"{len(rotated)} rotated, {len(failed)} failed",
    )
