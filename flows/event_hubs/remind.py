"""`remind_event_organizers`: tell the organizers when their hub expires."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.operation import begin_hub
from hubfleet import events
from hubfleet.paths import data_dir
from hubfleet.results import OrganizersReminded
from tasks.event_schedule import (
    load_extension,
    utc_now,
)
from tasks.notify import mail_organizers, notify


@flow(name="remind_event_organizers", flow_run_name="remind_event_organizers {cluster}/{hub}")
async def remind_event_organizers(
    cluster: str, hub: str, dry_run: bool = False, operator: str | None = None
) -> OrganizersReminded:
    """Tell the event's organizers when their hub expires (by mail through the fleet's
    `organizer_mail` server, in the event's time zone, with where the data will go) and the
    ops team through the notification blocks."""
    op = await begin_hub("remind_event_organizers", cluster, hub, operator)
    spec = events.event_spec(op.cluster, op.hub)
    times = events.event_times(spec, await load_extension(cluster, hub))
    now = utc_now()
    if now >= times.expire_at:
        get_run_logger().info("%s already expired at %s; no reminder", op.target, times.expire_at)
        return OrganizersReminded(hub=op.target, skipped="already past expiry", dry_run=dry_run)
    # Each expiry exports under its own <time> directory below this location.
    target = events.export_url(op.cluster, op.hub, str(data_dir() / "exports"), "")
    where = (
        f"exported to {target}<time of expiry>/, then deleted"
        if target
        else "deleted (not exported: data_policy delete)"
    )
    subject = f"[hubfleet] {op.hub.domain} expires in {events._human(times.expire_at - now)}"
    body = (
        f"To: {', '.join(spec.organizers)}\n\n"
        f"The event hub {op.target} ({op.hub.domain}) will be removed at "
        f"{events.local_time(times.expire_at, spec.timezone)} "
        f"(event end {events.local_time(times.end, spec.timezone)} + grace).\n"
        f"Home directories will be {where}.\n"
        f"To keep it longer, ask the ops team to extend it (extend_event_hub) or change `end`."
    )
    sent = [] if dry_run else await notify(op.fleet, subject, body)
    mailed = [] if dry_run else await mail_organizers(op.fleet, spec.organizers, subject, body)
    await acreate_markdown_artifact(
        key=f"event-reminder-{cluster}-{hub}",
        markdown=f"# {'Dry run: ' if dry_run else ''}reminder for {op.target}\n\n"
        f"**{subject}**\n\n```\n{body}\n```\n\nSent through: {', '.join(sent) or 'nothing'}\n\n"
        f"Mailed to: {', '.join(mailed) or 'nobody'}\n",
        description=f"reminder for {op.target}",
    )
    return OrganizersReminded(
        hub=op.target, sent=sent, mailed=mailed, subject=subject, dry_run=dry_run
    )
