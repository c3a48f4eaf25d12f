"""The OAuth client a hub logs its users in through (a hub's `auth:`, hubfleet/auth.py)."""

from __future__ import annotations

from datetime import datetime

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class OAuthClient(Block):
    """The client secret of a hub's OAuth application at GitHub, Google, CILogon or an
    OpenID Connect provider (its client id is in the fleet: it is not secret).

    The secret reaches the hub only through its environment (`OAUTH_CLIENT_SECRET`): on
    Kubernetes from the Secret `hubfleet-oauth` that deploy_hub writes through the API, on
    a local hub from the process environment. Never in values files, helm releases, logs,
    parameters or command lines. The providers have no API that issues a new client secret,
    so `hubfleet credentials` lists it with its age and says when to rotate it by hand.
    """

    _block_type_name = "OAuth Client"
    _block_type_slug = "hubfleet-oauth-client"
    _description = "Client secret of the OAuth application a hub logs users in through."

    hub: str = Field(description="The hub, as cluster/hub.")
    client_id: str = Field(description="The client's id (as in the hub's `auth:`).")
    client_secret: SecretStr = Field(description="The client secret. Never logged.")
    created_at: datetime = Field(description="When this secret was stored (UTC).")
    last_rotated: datetime | None = Field(
        None, description="When a new secret last replaced an old one (UTC); None: never."
    )
