"""Which credential a cluster's deployer uses, where its secret is stored, and how old it is.

The secret itself lives in the provider's own block, so the rest of hubfleet (and
prefect-aws / prefect-gcp / prefect-azure tasks) can use it directly:

| kind                | secret block (named `<cluster>-deployer` unless said otherwise)  |
|---------------------|------------------------------------------------------------------|
| aws-access-key      | prefect-aws `AwsCredentials`                                     |
| gcp-sa-key          | prefect-gcp `GcpCredentials` (service_account_info)              |
| azure-client-secret | prefect-azure `AzureContainerInstanceCredentials`                |
| kube-sa-token       | `ClusterAccess` named `<cluster>` (the kubeconfig's user token)  |

This block holds no secret: only identities and times, for the inventory and rotation.
"""

from __future__ import annotations

from datetime import datetime

from prefect.blocks.core import Block
from pydantic import Field

from hubfleet.credentials import CredentialKind
from hubfleet.errors import HubfleetError


class DeployerCredentialMissing(HubfleetError):
    """No deployer credential is registered for a cluster; nothing was changed."""


class DeployerCredential(Block):
    """The deployer credential of one cluster (block name: `<cluster>-deployer`)."""

    _block_type_name = "Deployer Credential"
    _block_type_slug = "hubfleet-deployer-credential"
    _description = "Identity, age and storage of one cluster's deployer credential (no secret)."

    cluster: str = Field(description="The cluster whose deployer uses this credential.")
    kind: CredentialKind = Field(description="aws-access-key, gcp-sa-key, ... (see module).")
    principal: str = Field(
        description="Who the credential authenticates: IAM user name, service-account "
        "email, application object id, or <namespace>/<service account>."
    )
    credential_id: str = Field(
        description="Public id of the current credential: access key id, key name, "
        "password keyId, or token Secret name."
    )
    secret_block: str = Field(description="Name of the block holding the secret itself.")
    created_at: datetime = Field(description="When the current credential was created (UTC).")
    last_rotated: datetime | None = Field(
        None, description="When rotate_credentials last replaced it (UTC); None: never."
    )
    consumed_by: list[str] = Field(
        default_factory=list,
        description="Where else the credential is used, e.g. secret:<namespace>/<name>.",
    )
    api_endpoint: str | None = Field(
        None,
        description="Provider API base URL override (an emulator or a private endpoint); "
        "None means the provider's public API.",
    )
    token_endpoint: str | None = Field(
        None, description="OAuth token endpoint override (GCP, Azure); None: the public one."
    )
    tenant_id: str | None = Field(None, description="Azure AD tenant (azure-client-secret).")

    @staticmethod
    def block_name(cluster: str) -> str:
        return f"{cluster}-deployer"

    @classmethod
    async def for_cluster(cls, cluster: str) -> DeployerCredential:
        """Load the cluster's record, or explain how to register one."""
        try:
            loaded = await cls.aload(cls.block_name(cluster))
        except ValueError:
            raise DeployerCredentialMissing(
                f"no deployer credential is registered for cluster {cluster!r}: save a "
                f"DeployerCredential block named {cls.block_name(cluster)!r} next to the "
                "secret block (see blocks/deployer_credential.py). Nothing was changed."
            ) from None
        assert isinstance(loaded, cls)
        return loaded
