"""Organizers hear about their event by mail, through a real SMTP server on loopback
(aiosmtpd, with a login the server checks): the reminder (times in the event's time zone,
where the data will go) and the expiry notice (when the hub went, where the data went, the
export verified), each addressed to the event's organizers. The SMTP password never
reaches a run's logs, artifacts or results; a fleet naming a server block that does not
exist fails the reminder (never silently dropped)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter

from blocks.smtp_server import SmtpServer
from flows.deploy_hub import deploy_hub
from flows.event_hubs import expire_event_hub, remind_event_organizers
from hubfleet import events
from hubfleet.events import EventRefused
from hubfleet.loader import load_fleet
from hubfleet.paths import fleet_dir
from hubfleet.results import Expiry
from hubfleet.server import any_free_port

pytestmark = pytest.mark.usefixtures("prefect_server")

EventWriter = Any
USER = "hubfleet-mailer"


class Inbox:
    """What the SMTP server accepted: (envelope recipients, parsed message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int, str]]:
    """A real SMTP server on loopback that requires a login (plain, as a local relay)."""
    password = secrets.token_urlsafe(16)

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            password.encode(),
        )
        return AuthResult(success=ok)

    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=any_free_port(),  # the controller checks it started by connecting to it
        authenticator=check,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield inbox, controller.port, password
    finally:
        controller.stop()


def _with_organizer_mail(root: Path, block: str) -> None:
    settings = root / "fleet.yaml"
    settings.write_text(settings.read_text() + f"organizer_mail: {block}\n")


async def _texts_of_runs(tag: str) -> str:
    """Every log line, artifact and result of the runs tagged `tag`, as one text."""
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
        logs = await client.read_logs(LogFilter(flow_run_id={"any_": [r.id for r in runs]}))
        artifacts = await client.read_artifacts()
    return "\n".join(
        [log.message for log in logs]
        + [str(a.data) for a in artifacts]
        + [str(r.state.message) for r in runs if r.state]
    )


async def test_reminder_and_expiry_notice_reach_the_organizers_by_mail(
    event_fleet: EventWriter, smtp: tuple[Inbox, int, str], webhook: list
) -> None:
    inbox, port, password = smtp
    block = f"mail-{secrets.token_hex(3)}"
    await SmtpServer(
        host="127.0.0.1",
        port=port,
        security="none",
        from_address="hubfleet@example.org",
        username=USER,
        password=password,
    ).save(block, overwrite=True)
    now = datetime.now(UTC)
    root = event_fleet(
        start=now - timedelta(minutes=30), end=now + timedelta(minutes=90), reminders="[PT2H]"
    )
    _with_organizer_mail(root, block)

    # The reminder: to the organizers, the expiry in Paris time, where the homes will go.
    reminded = await remind_event_organizers("local", "workshop", operator="erin")
    assert reminded.mailed == ["organizer@example.org"], reminded
    ((to, mail),) = inbox.messages
    assert to == ["organizer@example.org"] and mail["To"] == "organizer@example.org"
    assert mail["From"] == "hubfleet@example.org"
    assert mail["Subject"] == reminded.subject
    fleet = load_fleet(fleet_dir())
    cluster = fleet.cluster("local")
    spec = events.event_spec(cluster, next(h for h in cluster.hubs if h.name == "workshop"))
    times = events.event_times(spec, None)
    body = mail.get_content()
    assert events.local_time(times.expire_at, "Europe/Paris") in body
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d CES?T", body), body
    assert "exported to file://" in body and "/local/workshop/<time of expiry>/" in body

    # The event ends; the hub is expired: the notice says where the data went.
    await deploy_hub("local", "workshop", operator="erin")
    event_fleet(start=now - timedelta(minutes=30), end=now - timedelta(seconds=1), grace="PT0S")
    expired = await expire_event_hub("local", "workshop", operator="erin")
    assert expired.outcome is Expiry.expired and expired.mailed == ["organizer@example.org"]
    (_, notice) = inbox.messages[1]
    assert notice["Subject"] == "[hubfleet] workshop.local.hubfleet.test has expired"
    text = notice.get_content()
    assert f"exported to {expired.export.url}" in text and "verified" in text
    assert re.search(r"removed at \d{4}-\d\d-\d\d \d\d:\d\d CES?T", text), text

    # The password went to the server only.
    assert password not in await _texts_of_runs("hub:local/workshop")
    assert password not in str(reminded) + str(expired)


async def test_a_missing_mail_server_block_fails_the_reminder(
    event_fleet: EventWriter, webhook: list
) -> None:
    now = datetime.now(UTC)
    root = event_fleet(
        start=now + timedelta(minutes=30), end=now + timedelta(minutes=90), reminders="[PT1H]"
    )
    _with_organizer_mail(root, "no-such-mail")
    with pytest.raises(EventRefused, match="no SMTP Server block named 'no-such-mail'"):
        await remind_event_organizers("local", "workshop", operator="erin")
