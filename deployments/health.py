"""The alert of the scheduled health sweeps, registered with Prefect by `hubfleet setup`.

The sweeps themselves (`health-deep`, nightly; `health-shallow`, every 15 minutes) are
entries of `deployments/registry.py` like every other operation, so they run from any
worker. Here: the automation `hubfleet: hub unhealthy`, which turns each
`hubfleet.hub.unhealthy` event into a notification through the fleet's notification block
(`notify:` in fleet.yaml, e.g. a CustomWebhookNotificationBlock named `ops-webhook`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet

AUTOMATION_NAME = "hubfleet: hub unhealthy"

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


def alert_automation(block_id: UUID) -> Any:
    """Notify `block_id` once per `hubfleet.hub.unhealthy` event (one event per outage)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from flows.check_fleet_health import UNHEALTHY_EVENT

    return AutomationCore(
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


async def find_block_document(client: Any, name: str) -> Any | None:
    """A block document by name, whatever its type (the fleet names notification blocks)."""
    from prefect.client.schemas.objects import BlockDocument

    response = await client._client.post(
        "/block_documents/filter",
        json={"block_documents": {"name": {"any_": [name]}}, "include_secrets": False},
    )
    response.raise_for_status()
    found = [BlockDocument.model_validate(d) for d in response.json()]
    return found[0] if found else None


async def notification_block_id(client: Any, fleet: Fleet, notify: str | None = None) -> UUID:
    """The id of the block that notifies (`notify`, default fleet.yaml's first `notify`)."""
    name = notify or (fleet.settings.notify[0] if fleet.settings.notify else None)
    if name is None:
        raise NotificationBlockMissing(
            "fleet.yaml has no `notify:` block names; add e.g. `notify: [ops-webhook]` and "
            "create that notification block. Nothing was registered."
        )
    doc = await find_block_document(client, name)
    capabilities = doc.block_schema.capabilities if doc and doc.block_schema else []
    if doc is not None and "notify" in capabilities:
        return UUID(str(doc.id))
    raise NotificationBlockMissing(
        f"notification block {name!r} (from fleet.yaml `notify`) does not exist; "
        "create it, e.g. CustomWebhookNotificationBlock(name=..., url=...)"
        f".save({name!r}). Nothing was registered."
    )
