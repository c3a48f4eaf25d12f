"""Azure application (service principal) client secrets of a cluster's deployer, rotated
through Microsoft Graph.

Clients: azure-identity `ClientSecretCredential` (MSAL underneath) for tokens, and the
Graph REST API through azure-core's `PipelineClient` with a `BearerTokenCredentialPolicy`:
the same pipeline the Azure SDKs use. msgraph-sdk is not used: it pulls in the Kiota
stack and thousands of generated modules for the two calls needed here, which azure-core
(already installed for prefect-azure) makes directly.

The application rotates its own secret: the current secret adds the new one
(`POST /applications/{id}/addPassword`), the new one removes the old one
(`POST /applications/{id}/removePassword`); the app needs Application.ReadWrite.OwnedBy
and to own itself. Verification is a client-credentials token request with the secret;
after revocation that request must be refused.

The secret lives in a prefect-azure `AzureContainerInstanceCredentials` block (client id,
tenant, secret, and `credential_kwargs` such as `connection_verify` for a private CA); the
password's keyId and age in the cluster's `DeployerCredential` block, whose `api_endpoint`
(Graph root) and `token_endpoint` (authority host) may point elsewhere.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

from azure.core import PipelineClient
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RetryPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.identity import ClientSecretCredential
from prefect_azure import AzureContainerInstanceCredentials
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from hubfleet.credentials import CredentialKind
from hubfleet.errors import HubfleetError
from tasks.retry import TransientError
from tasks.rotation import CredentialRefused, DeployerKeyRotator, Issued

GRAPH = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class GraphError(HubfleetError):
    """Graph answered with an error that is neither a refusal nor transient."""


class AzureClientSecretRotator(DeployerKeyRotator[AzureContainerInstanceCredentials]):
    """Rotates the deployer application's client secret (addPassword, token, remove)."""

    kind = CredentialKind.azure_client_secret
    #: Entra ID takes a while to accept a new secret everywhere: a refusal of a secret this
    #: young is retried inside `verify` before it counts.
    propagation_seconds: float = 30.0

    stored_type = AzureContainerInstanceCredentials

    def __init__(self, record: DeployerCredential, stored: AzureContainerInstanceCredentials):
        super().__init__(record, stored)
        self.app_object_id = record.principal
        self.tenant = record.tenant_id or stored.tenant_id

    # --- azure-identity and the Graph pipeline -----------------------------------------

    @property
    def _verify_tls(self) -> Any:
        return self.stored.credential_kwargs.get("connection_verify", True)

    def _credential(self, credential: Issued) -> ClientSecretCredential:
        kwargs = dict(self.stored.credential_kwargs)
        if self.record.token_endpoint:
            kwargs["authority"] = self.record.token_endpoint
            kwargs["disable_instance_discovery"] = True  # a private authority is not listed
        return ClientSecretCredential(
            str(self.tenant),
            str(self.stored.client_id),
            credential.secret.get_secret_value(),
            **kwargs,
        )

    async def _graph(self, credential: Issued, op: str, body: dict[str, Any]) -> Any:
        """POST /v1.0/applications/{id}/{op} as the app with `credential`."""
        base = (self.record.api_endpoint or GRAPH).rstrip("/")
        url = f"{base}/v1.0/applications/{self.app_object_id}/{op}"

        def run() -> Any:
            with self._credential(credential) as token_source:
                client: PipelineClient[Any, Any] = PipelineClient(
                    base,
                    policies=[
                        RetryPolicy(retry_total=2),
                        BearerTokenCredentialPolicy(token_source, GRAPH_SCOPE),
                    ],
                    transport=RequestsTransport(connection_verify=self._verify_tls),
                )
                with client:
                    response = client.send_request(HttpRequest("POST", url, json=body))
                    return response.status_code, (response.json() if response.content else None)

        try:
            status, payload = await asyncio.to_thread(run)
        except ClientAuthenticationError:
            raise CredentialRefused(
                f"Entra ID refused secret {credential.ident} of app {self.stored.client_id}"
            ) from None
        except ServiceRequestError as exc:
            raise TransientError(f"Graph {op}: {type(exc).__name__}") from None
        if status in (401, 403):
            raise CredentialRefused(f"Graph refused {op} with secret {credential.ident}: {status}")
        if status in _TRANSIENT_STATUS:
            raise TransientError(f"Graph {op}: HTTP {status}")
        if status >= 400:
            raise GraphError(f"Graph {op} failed: HTTP {status}")
        return payload

    # --- the protocol ------------------------------------------------------------------

    async def current(self) -> Issued:
        secret = self.stored.client_secret
        if secret is None or not self.stored.client_id or not self.tenant:
            raise CredentialRefused(
                f"block {self.record.secret_block!r} holds no client secret for cluster "
                f"{self.cluster!r}; store the deployer app's secret there first"
            )
        return Issued(self.record.credential_id, secret, self.record.created_at)

    async def create(self) -> Issued:
        old = await self.current()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        made = await self._graph(
            old,
            "addPassword",
            {"passwordCredential": {"displayName": f"hubfleet {self.cluster} {stamp}"}},
        )
        start = made.get("startDateTime")
        return Issued(
            str(made["keyId"]),
            SecretStr(made["secretText"]),
            datetime.fromisoformat(start.replace("Z", "+00:00")) if start else datetime.now(UTC),
        )

    async def delete(self, new: Issued) -> None:
        await self._graph(await self.current(), "removePassword", {"keyId": new.ident})

    def stored_with(self, new: Issued) -> AzureContainerInstanceCredentials:
        return AzureContainerInstanceCredentials(
            client_id=self.stored.client_id,
            tenant_id=self.stored.tenant_id,
            client_secret=new.secret,
            credential_kwargs=self.stored.credential_kwargs,
        )

    async def _token(self, credential: Issued) -> None:
        def run() -> None:
            with self._credential(credential) as token_source:
                token_source.get_token(GRAPH_SCOPE)

        try:
            await asyncio.to_thread(run)
        except ClientAuthenticationError:
            raise CredentialRefused(
                f"Entra ID refused secret {credential.ident} of app {self.stored.client_id}"
            ) from None
        except ServiceRequestError as exc:
            raise TransientError(f"Entra ID token endpoint: {type(exc).__name__}") from None

    async def verify(self, credential: Issued) -> str:
        young_until = credential.created_at.timestamp() + self.propagation_seconds
        while True:
            try:
                await self._token(credential)
                return f"app {self.stored.client_id} (tenant {self.tenant})"
            except CredentialRefused:
                if datetime.now(UTC).timestamp() >= young_until:
                    raise
            await asyncio.sleep(1.0)

    async def revoke(self, old: Issued) -> None:
        stored = cast(
            AzureContainerInstanceCredentials,
            await AzureContainerInstanceCredentials.aload(self.record.secret_block),
        )
        assert stored.client_secret is not None
        record = await DeployerCredential.for_cluster(self.cluster)
        assert record.credential_id != old.ident
        new = Issued(record.credential_id, stored.client_secret)
        await self._graph(new, "removePassword", {"keyId": old.ident})

    async def refused(self, old: Issued) -> bool:
        try:
            await self._token(old)
        except CredentialRefused:
            return True
        return False
