"""The scheduled health sweeps and the alert automation, registered with Prefect.

- `health-deep` (nightly, `schedules.health_deep`): every level, spawn included; one
  failed night alerts (its probes were already retried).
- `health-shallow` (`schedules.health_shallow`, every 15 minutes): reachable, api, auth;
  alerts after three failed sweeps in a row, so one blip is not an alarm.
- The automation `hubfleet: hub unhealthy` turns each `hubfleet.hub.unhealthy` event into
  a notification through the fleet's notification block (`notify:` in fleet.yaml, e.g. a
  CustomWebhookNotificationBlock named `ops-webhook`).

`hubfleet setup` calls `register_health(fleet, ...)`; nothing here runs at import time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet

AUTOMATION_NAME = "hubfleet: hub unhealthy"
UNHEALTHY_EVENT = "hubfleet.hub.unhealthy"

#: name → (schedule field in fleet.yaml, flow parameters)
SWEEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "health-deep": ("health_deep", {"depth": "deep", "alert_after": 1}),
    "health-shallow": ("health_shallow", {"depth": "shallow", "alert_after": 3}),
}

SUBJECT = "hubfleet: {{ event.resource['prefect.resource.name'] }} is {{ event.payload.verdict }}"
BODY = (
    "{{ event.resource['prefect.resource.name'] }} is {{ event.payload.verdict }} at level "
    "{{ event.payload.level }}: {{ event.payload.reason }}\n"
    "Failing for {{ event.payload.failures }} {{ event.payload.depth }} sweep(s), "
    "since {{ event.payload.since }}.\n"
    "History: hubfleet health {{ event.resource['prefect.resource.name'] }} --since 7d"
)


class NotificationBlockMissing(HubfleetError):
    """The notification block named in fleet.yaml does not exist; nothing was registered."""


def health_deployments(fleet: Fleet) -> list[Any]:
    """The two sweep deployments (not yet registered), schedules from fleet.yaml."""
    from flows.check_fleet_health import check_fleet_health

    return [
        check_fleet_health.to_deployment(
            _sync=True,  # type: ignore[call-arg]  # same in sync and async callers
            name=name,
            cron=getattr(fleet.settings.schedules, schedule),
            parameters=parameters,
            tags=["op:check_fleet_health", f"depth:{parameters['depth']}"],
            description=f"{parameters['depth']} health sweep of every hub "
            f"(alerts after {parameters['alert_after']} failed sweep(s) in a row).",
            # Streaks are carried from one sweep to the next: never two at once.
            concurrency_limit=1,
        )
        for name, (schedule, parameters) in SWEEPS.items()
    ]


async def register_health_deployments(fleet: Fleet, work_pool: str = "hubfleet") -> list[UUID]:
    """Create or update the two sweep deployments on `work_pool`. Changes: deployments."""
    return [await d.aapply(work_pool_name=work_pool) for d in health_deployments(fleet)]  # type: ignore[attr-defined]


async def register_health_alerts(fleet: Fleet, notify: str | None = None) -> UUID:
    """Create (or replace) the automation that notifies on `hubfleet.hub.unhealthy`.

    `notify` names the notification block; default: the first of fleet.yaml's `notify`.
    Changes: the automation named `AUTOMATION_NAME`.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    name = notify or (fleet.settings.notify[0] if fleet.settings.notify else None)
    if name is None:
        raise NotificationBlockMissing(
            "fleet.yaml has no `notify:` block names; add e.g. `notify: [ops-webhook]` and "
            "create that notification block. Nothing was registered."
        )
    async with get_client() as client:
        block_id = await _notification_block_id(client, name)
        if block_id is None:
            raise NotificationBlockMissing(
                f"notification block {name!r} (from fleet.yaml `notify`) does not exist; "
                "create it, e.g. CustomWebhookNotificationBlock(name=..., url=...)"
                f".save({name!r}). Nothing was registered."
            )
        automation = AutomationCore(
            name=AUTOMATION_NAME,
            description="Notify when a hub fails enough health sweeps in a row "
            "(the sweep emits one event per outage).",
            trigger=EventTrigger(
                expect={UNHEALTHY_EVENT},
                match={"prefect.resource.id": "hubfleet.hub.*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
        )
        for old in await client.read_automations_by_name(AUTOMATION_NAME):
            await client.delete_automation(old.id)
        return await client.create_automation(automation)


async def _notification_block_id(client: Any, name: str) -> UUID | None:
    """The block document named `name` whose type can notify (secrets not read)."""
    from prefect.client.schemas.objects import BlockDocument

    response = await client._client.post(
        "/block_documents/filter",
        json={"block_documents": {"name": {"any_": [name]}}, "include_secrets": False},
    )
    response.raise_for_status()
    for raw in response.json():
        doc = BlockDocument.model_validate(raw)
        capabilities = doc.block_schema.capabilities if doc.block_schema else []
        if doc.name == name and "notify" in capabilities:
            return UUID(str(doc.id))
    return None


async def register_health(
    fleet: Fleet, work_pool: str = "hubfleet", notify: str | None = None
) -> dict[str, Any]:
    """Everything health needs in Prefect: the two scheduled sweeps and the alert automation."""
    deployments = await register_health_deployments(fleet, work_pool)
    automation = await register_health_alerts(fleet, notify)
    return {"deployments": deployments, "automation": automation}
