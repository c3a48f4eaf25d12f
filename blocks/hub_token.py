"""The ops token hubfleet uses to manage a hub through its REST API."""

from __future__ import annotations

from datetime import datetime

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class HubOpsToken(Block):
    """An API token of the hub's `hubfleet-ops` user, whose role holds only the scopes
    hubfleet needs (hubfleet/localhub.py OPS_SCOPES: never admin, never deleting users).

    The token is issued through the REST API with an expiry, so it can be revoked by id:
    that is what makes rotation possible (tokens declared in jupyterhub_config never are).
    """

    _block_type_name = "Hub Ops Token"
    _block_type_slug = "hubfleet-hub-ops-token"
    _description = "API token of the hubfleet ops service of one JupyterHub."

    hub: str = Field(description="The hub, as cluster/hub.")
    url: str = Field(description="Base URL the token was verified against.")
    token_id: str = Field(description="JupyterHub's id of the token (of user hubfleet-ops).")
    token: SecretStr = Field(description="The API token. Never logged or passed as a parameter.")
    created_at: datetime = Field(description="When the token was created (UTC).")
    expires_at: datetime | None = Field(None, description="When JupyterHub stops accepting it.")
    last_rotated: datetime | None = Field(
        None, description="When rotate_credentials last replaced the token (UTC); None: never."
    )

    @staticmethod
    def block_name(cluster: str, hub: str) -> str:
        """Block document name: DNS-safe names joined, so it is always a valid block name."""
        return f"{cluster}-{hub}"
