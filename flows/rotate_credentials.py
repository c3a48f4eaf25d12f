"""rotate_credentials: replace every credential in scope that is older than its policy.

Runbook: read the inventory -> plan what is due -> for each credential (one child run,
under its hub's or cluster's lock): create new -> store -> verify new -> switch consumers
-> revoke old -> verify old is refused; any failure before the revocation rolls back.
One failing credential never stops the others; the run fails at the end if any failed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.operation import Operation, begin, operator_name
from hubfleet.credentials import (
    CredentialKind,
    CredentialRecord,
    RotationPlan,
    format_age,
    parse_scope,
    plan_rotation,
)
from hubfleet.errors import HubfleetError
from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir
from tasks.locks import cluster_lock, ensure_concurrency_limits, hub_lock
from tasks.rotation import RotationFailed, collect_inventory, rotate, rotator_for


class RotationsFailed(HubfleetError):
    """Some credentials could not be rotated; each was rolled back or is named."""


@flow(name="rotate_credentials", flow_run_name="rotate_credentials {scope}")
async def rotate_credentials(
    scope: str = "all",
    max_age: timedelta | None = None,
    dry_run: bool = False,
    operator: str | None = None,
) -> dict[str, Any]:
    """Rotate the credentials in `scope` ('all', 'cluster:<c>', 'hub:<c>/<h>', 'kind:<k>')
    older than `max_age` (default: each kind's policy); with dry_run, only show the plan."""
    fleet = load_fleet(fleet_dir())
    target = parse_scope(scope, fleet)
    clusters = [target.cluster] if target.cluster else [c.name for c in fleet.clusters]
    who = operator_name(operator)
    for cluster in clusters:  # tags the run with every cluster it may touch
        await begin("rotate_credentials", cluster, target.hub, who)

    records = await collect_inventory(fleet)
    plan = plan_rotation(records, target, datetime.now(UTC), max_age)
    await _plan_artifact(plan, scope, dry_run)
    if dry_run:
        return {"scope": scope, "dry_run": True, "would_rotate": [_name(r) for r in plan.rotate]}

    await ensure_concurrency_limits(fleet)
    rotated, failed = [], []
    for record in plan.rotate:
        try:
            rotated.append(await rotate_credential(record.kind, record.cluster, record.hub, who))
        except Exception as exc:  # one credential's failure never stops the others
            failed.append({"credential": _name(record), "error": str(exc)})
    await _result_artifact(rotated, failed)
    if failed:
        raise RotationsFailed(
            f"{len(failed)} of {len(plan.rotate)} rotation(s) failed: "
            + "; ".join(f"{f['credential']}: {f['error']}" for f in failed)
        )
    return {"scope": scope, "rotated": rotated, "skipped": len(plan.skipped)}


@flow(
    name="rotate_credential",
    flow_run_name="rotate_credential {kind} {cluster}/{hub}",
)
async def rotate_credential(
    kind: CredentialKind, cluster: str, hub: str | None = None, operator: str | None = None
) -> dict[str, Any]:
    """Rotate one credential now by the protocol (tasks/rotation.py), holding its lock."""
    op: Operation = await begin("rotate_credentials", cluster, hub, operator)
    rotator = await rotator_for(op.fleet, kind, cluster, hub)
    lock = hub_lock(cluster, hub) if hub else cluster_lock(cluster)
    async with lock:
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
    return done.as_dict()


def _name(record: CredentialRecord) -> str:
    return f"{record.kind} {record.owner}"


async def _plan_artifact(plan: RotationPlan, scope: str, dry_run: bool) -> None:
    now = datetime.now(UTC)
    rows = [
        f"| {r.kind} | {r.owner} | {r.ident} | {format_age(r.age(now))} | rotate |"
        for r in plan.rotate
    ] + [
        f"| {r.kind} | {r.owner} | {r.ident} | {format_age(r.age(now))} | skip: {why} |"
        for r, why in plan.skipped
    ]
    title = "Dry run: would rotate" if dry_run else "Rotation plan"
    await acreate_markdown_artifact(
        key="rotation-plan",
        markdown=f"# {title} ({scope})\n\n| kind | owner | id | age | action |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
        description=f"{len(plan.rotate)} to rotate, {len(plan.skipped)} skipped",
    )


async def _result_artifact(rotated: list[dict[str, Any]], failed: list[dict[str, str]]) -> None:
    rows = [f"| {r['kind']} | {r['owner']} | {r['old']} | {r['new']} | ok |" for r in rotated]
    rows += [f"| {f['credential']} | | | | FAILED: {f['error']} |" for f in failed]
    await acreate_markdown_artifact(
        key="rotation-result",
        markdown="# Rotation result\n\n| kind | owner | old | new | result |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
        description=f"{len(rotated)} rotated, {len(failed)} failed",
    )
