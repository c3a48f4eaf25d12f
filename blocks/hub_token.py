"""The ops token hubfleet uses to manage a hub through its REST API."""

from __future__ import annotations

from datetime import datetime

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class HubOpsToken(Block):
    """The API token of a hub's `hubfleet-ops-*` service (admin scopes).

    The service is API-managed, so deleting it revokes the token: that is what makes
    rotation possible (tokens declared in jupyterhub_config are never revoked).
    """

    _block_type_name = "Hub Ops Token"
    _block_type_slug = "hubfleet-hub-ops-token"
    _description = "API token of the hubfleet ops service of one JupyterHub."

    hub: str = Field(description="The hub, as cluster/hub.")
    url: str = Field(description="Base URL the token was verified against.")
    service_name: str = Field(description="JupyterHub service that owns the token.")
    token: SecretStr = Field(description="The API token. Never logged or passed as a parameter.")
    created_at: datetime = Field(description="When the token was created (UTC).")
    last_rotated: datetime | None = Field(
        None, description="When rotate_credentials last replaced the token (UTC); None: never."
    )

    @staticmethod
    def block_name(cluster: str, hub: str) -> str:
        """Block document name: DNS-safe names joined, so it is always a valid block name."""
        return f"{cluster}-{hub}"
