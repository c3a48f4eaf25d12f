"""Notifications: one way hubfleet sends a message, through the notification blocks
named in `fleet.yaml` (`notify:`).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from hubfleet.events import (
    EventRefused,
)
from hubfleet.model import Fleet


@task(task_run_name="notify", cache_policy=NO_CACHE)
async def notify(fleet: Fleet, subject: str, body: str) -> list[str]:
    """Send through every notification block named in `fleet.yaml` (`notify:`).

    Changes: nothing in hubfleet; the blocks deliver a message. Fails if the blocks named
    do not exist, so a reminder is never silently dropped; with `notify: []` (the fleet
    names none, e.g. the demo's fleet offline) it is sent nowhere and says so in the log.
    """
    names = set(fleet.settings.notify)
    if not names:
        get_run_logger().warning(
            "no notification target: fleet.yaml has `notify: []`; the message is recorded "
            "in this run (its artifact), not sent"
        )
        return []
    async with get_client() as client:
        docs = await client.read_block_documents(include_secrets=True, limit=200)
    blocks = [
        d
        for d in docs
        if d.name in names and d.block_schema and "notify" in d.block_schema.capabilities
    ]
    if not blocks:
        raise EventRefused(
            f"no notification block named {', '.join(sorted(names)) or '(none listed)'} exists; "
            "create one (e.g. a Custom Webhook block) or fix `notify` in fleet/fleet.yaml"
        )
    sent = []
    for doc in blocks:
        block = Block._from_block_document(doc)
        await block.notify(body=body, subject=subject)  # type: ignore[attr-defined]
        sent.append(str(doc.name))
    return sent
