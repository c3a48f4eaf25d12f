"""`hubfleet setup`: make a Prefect server ready to operate the fleet, idempotently.

It registers block types, the work pool (a `process` pool it creates, or an existing
`kubernetes` pool whose Jobs run a worker image), per-cluster and per-hub global
concurrency limits, one deployment per available operation (with the fleet's schedules and
a parameter schema whose cluster and hub fields are enums of the fleet), and two
automations: a notification on any failed or crashed operation, and zombie-run detection
(runs that stop heart-beating become Crashed, as Prefect recommends for self-hosted
servers). Each object is compared with what the server holds and written only if it
differs, so a second run reports everything `unchanged`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.automations import AutomationCore
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    WorkPoolCreate,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound

from deployments.health import find_block_document
from deployments.registry import (
    DEFAULT_POOL,
    OPERATIONS,
    PARAMETER_DOCS,
    OperationSpec,
    resolve,
)
from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet
from hubfleet.paths import REPO_ROOT, WORKER_IMAGE_FLEET, WORKER_IMAGE_ROOT

#: Seconds between flow-run heartbeats of worker runs (Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
#: A run silent this long is marked Crashed: three missed heartbeats.
ZOMBIE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)

NOTIFY_AUTOMATION = "hubfleet: notify on failed or crashed operation ({block})"
ZOMBIE_AUTOMATION = "hubfleet: crash zombie runs"
DRIFT_AUTOMATION = "hubfleet: notify on cluster drift ({block})"

NOTIFY_BODY = (
    "{{ flow.name }} run '{{ flow_run.name }}' ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n"
    "Tags: {{ flow_run.tags | join(', ') }}\n"
    "Run: {{ flow_run | ui_url }}"
)

#: `detect_drift`'s event (`hubfleet.cluster.drifted`): what Terraform would change. The lists
#: by subscript: `payload.update` would be the dict's own update method, rendered empty.
DRIFT_SUBJECT = "hubfleet: cluster {{ event.payload.cluster }} drifted from its Terraform"
DRIFT_BODY = (
    "Terraform would change cluster {{ event.payload.cluster }}: {{ event.payload.counts }}.\n"
    "Create: {{ event.payload['create'] | join(', ') }}\n"
    "Update: {{ event.payload['update'] | join(', ') }}\n"
    "Replace: {{ event.payload['replace'] | join(', ') }}\n"
    "Destroy: {{ event.payload['destroy'] | join(', ') }}\n"
    "Fleet revision: {{ event.payload.revision }}. Review with `hubfleet drift`; bring it back "
    "with provision_cluster (action=plan, then apply)."
)


class SetupError(HubfleetError):
    """`hubfleet setup` cannot proceed; the message names what to fix."""


@dataclass
class SetupReport:
    """What `setup` did to each object, by name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record(self, what: str, outcome: str) -> None:
        getattr(self, outcome).append(what)

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        )


async def setup(
    client: PrefectClient,
    fleet: Fleet,
    *,
    pool: str = DEFAULT_POOL,
    registry: tuple[OperationSpec, ...] = OPERATIONS,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
    zombie_after: timedelta = ZOMBIE_AFTER,
) -> SetupReport:
    """Register everything the fleet needs on the server `client` talks to."""
    if heartbeat_seconds < 30:
        raise SetupError(f"heartbeat_seconds={heartbeat_seconds}: Prefect's minimum is 30")
    if zombie_after.total_seconds() <= heartbeat_seconds:
        raise SetupError(
            f"zombie_after={zombie_after.total_seconds():g}s must exceed the heartbeat "
            f"interval ({heartbeat_seconds}s), else healthy runs are crashed"
        )
    available = resolve(registry)
    report = SetupReport()
    # Where the deployments' runs execute decides their working directory and fleet path.
    pool_type = await existing_pool_type(client, pool) or "process"
    # Check every scheduled operation before changing anything: a bad entry changes nothing.
    plans = [
        (spec, flow, deployment_payload(spec, flow, fleet, pool, heartbeat_seconds, pool_type))
        for spec, flow in available
    ]

    await register_block_types(report)
    await ensure_work_pool(client, pool, heartbeat_seconds, report)
    await setup_concurrency_limits(client, fleet, report)
    for _spec, flow, payload in plans:
        await ensure_deployment(client, flow.name, payload, report)
    # After the notification blocks: the health alert automation uses them too.
    await ensure_notifications(client, fleet, report)
    await register_health_alert(client, fleet, report)
    await ensure_automation(client, zombie_automation(zombie_after), report)
    return report


# --- blocks ------------------------------------------------------------------------------


async def register_block_types(report: SetupReport) -> None:
    """hubfleet's own block types, so the UI can show and create them."""
    from blocks.hub_token import HubOpsToken
    from blocks.oauth_client import OAuthClient
    from blocks.smtp_server import SmtpServer

    # SmtpServer: `organizer_mail`, made in the UI; OAuthClient: a hub's login client
    # secret (`hubfleet oauth-client set`, or the UI).
    for block in (HubOpsToken, SmtpServer, OAuthClient):
        await block.aregister_type_and_schema()
        report.record(f"block type {block.get_block_type_slug()}", "unchanged")


# --- work pool ---------------------------------------------------------------------------


def process_pool_template(heartbeat_seconds: int) -> dict[str, Any]:
    """Prefect's process job template, with flow-run heartbeats on by default."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    env = template["variables"]["properties"]["env"]
    env["default"] = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds)}
    return template


#: Pool types whose runs hubfleet knows how to lay out: `process` (a worker on a machine
#: with this checkout) and `kubernetes` (a Job per run from a worker image; prefect-kubernetes).
POOL_TYPES = ("process", "kubernetes")


async def existing_pool_type(client: PrefectClient, pool: str) -> str | None:
    """The type of work pool `pool`, or None when there is no such pool."""
    try:
        return (await client.read_work_pool(pool)).type
    except ObjectNotFound:
        return None


async def ensure_work_pool(
    client: PrefectClient, pool: str, heartbeat_seconds: int, report: SetupReport
) -> None:
    """A `process` work pool, created if missing; an existing `kubernetes` pool is used as
    it is (its base job template is the operator's: deployments/kubernetes-work-pool.json
    with their image). A pool of any other type is an error, not replaced."""
    try:
        existing = await client.read_work_pool(pool)
    except ObjectNotFound:
        await client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                description="hubfleet operations (served by `hubfleet worker`).",
                base_job_template=process_pool_template(heartbeat_seconds),
            )
        )
        report.record(f"work pool {pool}", "created")
        return
    if existing.type not in POOL_TYPES:
        raise SetupError(
            f"work pool {pool!r} exists with type {existing.type!r}; hubfleet needs a "
            "'process' or 'kubernetes' pool: pass --pool with another name, or delete that "
            "pool"
        )
    if existing.type == "kubernetes":
        variables = (existing.base_job_template or {}).get("variables", {})
        image = variables.get("properties", {}).get("image", {}).get("default")
        if not image:
            report.warnings.append(
                f"work pool {pool!r} (kubernetes) has no default image: its Jobs would run "
                "Prefect's image, which has no hubfleet. Set the pool's image to a worker "
                "image (README: Running flows on a Kubernetes worker)"
            )
    report.record(f"work pool {pool}", "unchanged")


# --- concurrency limits ------------------------------------------------------------------


async def setup_concurrency_limits(
    client: PrefectClient, fleet: Fleet, report: SetupReport
) -> None:
    """The hub, cluster and deploy limits of `tasks.locks` (the flows' own lock names).

    Limits of clusters or hubs removed from the fleet are left alone: a run may hold them.
    """
    from tasks import locks

    before = {limit.name: limit.limit for limit in await _all_limits(client)}
    names = await locks.ensure_concurrency_limits(fleet)
    after = {limit.name: limit.limit for limit in await _all_limits(client)}
    for name in names:
        outcome = (
            "created"
            if name not in before
            else "unchanged"
            if before[name] == after.get(name)
            else "updated"
        )
        report.record(f"concurrency limit {name}", outcome)


async def _all_limits(client: PrefectClient) -> list[Any]:
    limits: list[Any] = []
    while page := await client.read_global_concurrency_limits(limit=200, offset=len(limits)):
        limits += page
    return limits


# --- deployments -------------------------------------------------------------------------


def ui_parameter_schema(flow: Any, fleet: Fleet) -> dict[str, Any]:
    """The flow's parameter schema, with cluster/hub enums from the fleet and UI titles.

    Flows keep plain `str` parameters (importable without a fleet); the enums are
    injected here, so the server rejects an unknown cluster or hub naming the field, and
    `hubfleet setup` re-registers them when the fleet changes.
    """
    schema = copy.deepcopy(flow.parameters.model_dump_for_openapi())
    props: dict[str, Any] = schema.get("properties", {})
    # Who ran it is recorded from how the run was created (flows/operation.py), so the
    # form has no operator field and the server refuses one, like any unknown parameter.
    props.pop("operator", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "operator"]
    if not schema["required"]:
        del schema["required"]
    schema["additionalProperties"] = False
    enums = {
        "cluster": sorted(c.name for c in fleet.clusters),
        "hub": sorted({h.name for c in fleet.clusters for h in c.hubs}),
    }
    for name, prop in props.items():
        title, description = PARAMETER_DOCS.get(name, (None, None))
        if title and prop.get("title") in (None, name, name.replace("_", " ").title()):
            prop["title"] = title
        if description and not prop.get("description"):
            prop["description"] = description
        if name in enums and prop.get("type") == "string":
            prop["enum"] = enums[name]
    if props.get("cluster", {}).get("enum") and props.get("hub", {}).get("enum"):
        # A hub of another cluster passes the flat enum: the chosen cluster narrows it.
        schema["allOf"] = [
            {
                "if": {"properties": {"cluster": {"const": c.name}}, "required": ["cluster"]},
                "then": {"properties": {"hub": {"enum": sorted(h.name for h in c.hubs)}}},
            }
            for c in fleet.clusters
        ]
    return schema


def deployment_payload(
    spec: OperationSpec,
    flow: Any,
    fleet: Fleet,
    pool: str,
    heartbeat_seconds: int,
    pool_type: str = "process",
) -> dict[str, Any]:
    """Everything `create_deployment` needs, in a form comparable with what is stored.

    On a `process` pool a run works in this checkout with the fleet setup read; on a
    `kubernetes` pool it runs in a worker image, with the checkout and fleet at
    WORKER_IMAGE_ROOT (the image is built from the same commit as the fleet setup read).
    """
    if pool_type == "kubernetes":
        workdir, fleet_path = WORKER_IMAGE_ROOT, WORKER_IMAGE_FLEET
    else:
        workdir, fleet_path = str(REPO_ROOT), str(fleet.root.resolve())
    schema = ui_parameter_schema(flow, fleet)
    cron = spec.cron(fleet)
    if cron:
        missing = set(schema.get("required", [])) - set(spec.schedule_parameters)
        if missing:
            raise SetupError(
                f"operation {spec.entrypoint}: its schedule {spec.schedule!r} gives no value "
                f"for required parameter(s) {', '.join(sorted(missing))}; set "
                "schedule_parameters in deployments/registry.py. Nothing was changed."
            )
    return {
        "name": spec.name,
        # A module path (no colon): the worker imports the installed package's module, so
        # flows share one module object with everything else they import.
        "entrypoint": f"{spec.module}.{spec.function}",
        "work_pool_name": pool,
        "tags": sorted({"hubfleet", f"op:{flow.name}", *spec.tags}),
        "description": spec.description or flow.description or "",
        "parameter_openapi_schema": schema,
        "enforce_parameter_schema": True,
        "concurrency_limit": spec.concurrency_limit,
        # The worker imports the installed package; the fleet is the one setup read, and
        # heartbeats feed the zombie-run automation.
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}],
        "job_variables": {
            "env": {
                "HUBFLEET_FLEET": fleet_path,
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds),
            }
        },
        "schedules": (
            [{"cron": cron, "timezone": "UTC", "parameters": dict(spec.schedule_parameters)}]
            if cron
            else []
        ),
    }


def _stored(deployment: Any) -> dict[str, Any]:
    return {
        "name": deployment.name,
        "entrypoint": deployment.entrypoint,
        "work_pool_name": deployment.work_pool_name,
        "tags": sorted(deployment.tags),
        "description": deployment.description or "",
        "parameter_openapi_schema": deployment.parameter_openapi_schema,
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
        "concurrency_limit": (
            deployment.global_concurrency_limit.limit
            if deployment.global_concurrency_limit
            else None
        ),
        "pull_steps": deployment.pull_steps,
        "job_variables": deployment.job_variables,
        "schedules": [
            {
                "cron": getattr(s.schedule, "cron", None),
                "timezone": getattr(s.schedule, "timezone", None),
                "parameters": s.parameters,
            }
            for s in deployment.schedules
        ],
    }


async def ensure_deployment(
    client: PrefectClient, flow_name: str, payload: dict[str, Any], report: SetupReport
) -> None:
    what = f"deployment {flow_name}/{payload['name']}"
    try:
        existing = await client.read_deployment_by_name(f"{flow_name}/{payload['name']}")
    except ObjectNotFound:
        existing = None
    if existing is not None and _stored(existing) == payload:
        report.record(what, "unchanged")
        return
    flow_id = await client.create_flow_from_name(flow_name)
    args = {k: v for k, v in payload.items() if k != "schedules"}
    # The server upserts by (flow, name) and replaces the schedules it is given.
    await client.create_deployment(
        flow_id=flow_id,
        schedules=[
            DeploymentScheduleCreate(
                schedule=CronSchedule(cron=s["cron"], timezone=s["timezone"]),
                active=True,
                parameters=s["parameters"],
            )
            for s in payload["schedules"]
        ],
        **args,
    )
    report.record(what, "updated" if existing else "created")


async def register_health_alert(client: PrefectClient, fleet: Fleet, report: SetupReport) -> None:
    """The `hubfleet: hub unhealthy` automation (deployments/health.py); the sweeps
    themselves are registry entries like every other operation."""
    from deployments.health import NotificationBlockMissing, alert_automation, notification_block_id

    try:
        block_id = await notification_block_id(client, fleet)
    except NotificationBlockMissing as exc:
        # The sweeps are registered; only their alert has nowhere to go yet.
        report.warnings.append(f"health alerts not registered: {exc}")
        return
    await ensure_automation(client, alert_automation(block_id), report)


# --- automations -------------------------------------------------------------------------


def notification_env_var(block: str) -> str:
    """Where `setup` reads a webhook URL to create the notification block `block`."""
    return "HUBFLEET_NOTIFY_URL_" + block.upper().replace("-", "_")


async def ensure_notification_block(
    client: PrefectClient, name: str, report: SetupReport
) -> Any | None:
    """The notification block `name`: as it is, or created from its env var's URL.

    The URL may embed a secret, so it is read from the environment, never a parameter.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    existing = await find_block_document(client, name)
    url = os.environ.get(notification_env_var(name))
    if existing is not None and not url:
        report.record(f"notification block {name}", "unchanged")
        return existing
    if url is None:
        report.warnings.append(
            f"notification block {name!r} (fleet.yaml notify) does not exist, so failed "
            f"operations notify nobody; create it in the UI or set "
            f"{notification_env_var(name)}=<webhook url> and run `hubfleet setup` again"
        )
        return None
    if existing is not None and existing.block_type.slug == "custom-webhook":
        current = await CustomWebhookNotificationBlock.aload(name)
        if getattr(current, "url", None) == url:
            report.record(f"notification block {name}", "unchanged")
            return existing
    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    await block.asave(name, overwrite=True)
    report.record(f"notification block {name}", "updated" if existing else "created")
    return await find_block_document(client, name)


def notify_automation(block_name: str, block_id: Any) -> AutomationCore:
    """Tell `block_name` once per operation run that ends Failed or Crashed."""
    return AutomationCore(
        name=NOTIFY_AUTOMATION.format(block=block_name),
        description="Every hubfleet operation (a run tagged op:*) that fails or crashes.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.op:*"}
            ),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="hubfleet: {{ flow_run.name }} {{ flow_run.state.name }}",
                body=NOTIFY_BODY,
            )
        ],
    )


def drift_automation(block_name: str, block_id: Any) -> AutomationCore:
    """Tell `block_name` once per `hubfleet.cluster.drifted` event (one per drifted cluster
    per `detect_drift` run), with what Terraform would change."""
    from flows.detect_drift import DRIFT_EVENT

    return AutomationCore(
        name=DRIFT_AUTOMATION.format(block=block_name),
        description="A cluster changed outside Terraform (detect_drift found a plan with changes).",
        trigger=EventTrigger(
            expect={DRIFT_EVENT},
            match=ResourceSpecification({"prefect.resource.id": "hubfleet.cluster.*"}),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=DRIFT_SUBJECT, body=DRIFT_BODY)
        ],
    )


def zombie_automation(zombie_after: timedelta) -> AutomationCore:
    """Prefect's recipe: a run that heart-beat and then went silent becomes Crashed."""
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"No heartbeat for {zombie_after.total_seconds():g}s: the worker or "
        "machine running it is gone.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=zombie_after,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {zombie_after.total_seconds():g}s: marked Crashed "
                "by hubfleet zombie-run detection (the worker or machine is gone).",
            )
        ],
    )


async def ensure_notifications(client: PrefectClient, fleet: Fleet, report: SetupReport) -> None:
    for name in fleet.settings.notify:
        block = await ensure_notification_block(client, name, report)
        if block is not None:
            await ensure_automation(client, notify_automation(name, block.id), report)
            await ensure_automation(client, drift_automation(name, block.id), report)


def _comparable(automation: Any) -> dict[str, Any]:
    """An automation as data, without what the server or pydantic assign: ids (a trigger gets
    a fresh random id each time it is built) and timestamps.

    Python mode, not JSON: a trigger's `expect`/`after` are sets, which JSON mode dumps as
    lists in iteration order, and two equal sets built in different insertion orders (ours
    from the source, the stored one from the server's list) can iterate differently under
    some hash seeds: a re-run then reported the automation "updated" now and then.
    """
    dumped = AutomationCore.model_validate(automation, from_attributes=True).model_dump(
        exclude={"id", "created", "updated"}
    )
    return dict(_without_ids(dumped))


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


async def ensure_automation(
    client: PrefectClient, wanted: AutomationCore, report: SetupReport
) -> None:
    """Create the automation, or update the one of that name if it differs."""
    what = f"automation {wanted.name!r}"
    existing = await client.read_automations_by_name(wanted.name)
    if not existing:
        await client.create_automation(wanted)
        report.record(what, "created")
        return
    first, *duplicates = existing
    for extra in duplicates:  # left by an interrupted older setup: one of each, always
        await client.delete_automation(extra.id)
    stored, desired = _comparable(first), _comparable(wanted)
    if stored == desired and not duplicates:
        report.record(what, "unchanged")
        return
    await client.update_automation(first.id, wanted)
    changed = sorted(k for k in desired if stored.get(k) != desired[k]) or ["duplicates"]
    report.record(f"{what} ({', '.join(changed)} changed)", "updated")
