"""The mail server event organizers are told through (fleet.yaml `organizer_mail`)."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class SmtpServer(Block):
    """An SMTP server that delivers hubfleet's messages to event organizers: reminders
    before their hub expires, and the notice that it expired and where the data went.

    The password is only ever read to log in to the server (never logged or passed as a
    parameter); a server that needs none (a relay on the local network) leaves it unset.
    """

    _block_type_name = "SMTP Server"
    _block_type_slug = "hubfleet-smtp-server"
    _description = "SMTP server hubfleet mails event organizers through."

    host: str = Field(description="Server host name, e.g. smtp.example.org.")
    port: int = Field(587, ge=1, le=65535, description="Server port (587: submission).")
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls",
        description="starttls: upgrade the connection (port 587); ssl: TLS from the start "
        "(port 465); none: plain (a local relay only).",
    )
    from_address: str = Field(description="The sender, e.g. hubfleet@example.org.")
    username: str | None = Field(None, description="Login name, if the server needs one.")
    password: SecretStr | None = Field(None, description="Login password (kept secret).")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per network operation.")
