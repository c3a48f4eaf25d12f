"""Messages to people, in one place: the ops team through the notification blocks named in
`fleet.yaml` (`notify:`), and event organizers by mail through its SMTP Server block
(`organizer_mail:`).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from hubfleet.errors import HubfleetError
from hubfleet.events import EventRefused
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


@task(task_run_name="mail-organizers", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
async def mail_organizers(
    fleet: Fleet, organizers: list[str], subject: str, body: str
) -> list[str]:
    """Mail `organizers` through the fleet's SMTP Server block (`organizer_mail`); returns
    the addresses mailed.

    Changes: nothing in hubfleet; the server delivers one message. With no
    `organizer_mail` the organizers are not mailed (the notify blocks still got the message)
    and the log says so; a named block that does not exist fails, so an organizer is never
    silently left out. Retried twice (a server briefly away).
    """
    from blocks.smtp_server import SmtpServer

    name = fleet.settings.organizer_mail
    if name is None:
        get_run_logger().warning(
            "organizers not mailed: fleet.yaml has no `organizer_mail` (an SMTP Server block); "
            "the message went to the notify blocks only"
        )
        return []
    try:
        server = await SmtpServer.aload(name)
    except ValueError:
        raise EventRefused(
            f"no SMTP Server block named {name!r} (fleet.yaml organizer_mail); create it, e.g. "
            f"SmtpServer(host=..., from_address=...).save({name!r}), or remove organizer_mail"
        ) from None
    assert isinstance(server, SmtpServer)
    where = await asyncio.to_thread(_send, server, organizers, subject, body)
    get_run_logger().info("mailed %s through %s", ", ".join(organizers), where)
    return list(organizers)


def _send(server: Any, to: list[str], subject: str, body: str) -> str:
    """One message to `to` through `server`; returns the server's host:port."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = server.from_address, ", ".join(to), subject
    message.set_content(body)
    where = f"{server.host}:{server.port}"
    try:
        if server.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host,
                server.port,
                timeout=server.timeout,
                context=ssl.create_default_context(),
            )
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=server.timeout)
        with smtp:
            if server.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if server.username:
                password = server.password.get_secret_value() if server.password else ""
                smtp.login(server.username, password)
            smtp.send_message(message)
        return where
    except (smtplib.SMTPException, OSError) as exc:
        # The server's reply, never the password (smtplib does not echo it).
        raise HubfleetError(
            f"mail to the organizers through {where} failed: {type(exc).__name__}: {exc}"
        ) from None
