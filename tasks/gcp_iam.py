"""GCP service-account keys of a cluster's deployer, rotated through the IAM API.

The official client (google-api-python-client) is built from the IAM v1 discovery document
it ships (no discovery request), authenticated with google-auth service-account
credentials. The deployer rotates its own key: the current key creates the new one
(`projects.serviceAccounts.keys.create`), the new one deletes the old one
(`keys.delete`); the service account needs iam.serviceAccountKeys.{create,list,delete}
on itself. A key is verified the way every Google client uses it: a JWT signed with the
key is exchanged for an access token at the token endpoint; after revocation that
exchange must be refused.

The key file (JSON) lives in a prefect-gcp `GcpCredentials` block (`service_account_info`,
a SecretDict); its key id and age in the cluster's `DeployerCredential` block, whose
`api_endpoint` / `token_endpoint` point the client at another IAM endpoint or token URI.

A service account holds at most ten user-managed keys; the deployer's belongs to hubfleet
alone, so a user-managed key that is not the stored one is a leftover of an interrupted
rotation (or made by hand): it is deleted before rotating, and the run says so.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import google.auth.exceptions
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from prefect_gcp import GcpCredentials
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from hubfleet.credentials import CredentialKind
from hubfleet.errors import HubfleetError
from tasks.retry import TransientError
from tasks.rotation import CredentialRefused, DeployerKeyRotator, Issued

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_REFUSED_STATUS = {401, 403}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class GcpApiError(HubfleetError):
    """The IAM API answered with an error that is neither a refusal nor transient."""


class GcpServiceAccountKeyRotator(DeployerKeyRotator[GcpCredentials]):
    """Rotates the deployer service account's key (create, token exchange, delete)."""

    kind = CredentialKind.gcp_service_account_key
    stored_type = GcpCredentials

    def __init__(self, record: DeployerCredential, stored: GcpCredentials):
        super().__init__(record, stored)
        self.email = record.principal

    # --- google-auth and the IAM client ------------------------------------------------

    def _info(self, credential: Issued) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(credential.secret.get_secret_value())
        if self.record.token_endpoint:
            info["token_uri"] = self.record.token_endpoint
        return info

    def _project(self, credential: Issued) -> str:
        return self.stored.project or str(self._info(credential)["project_id"])

    def _credentials(self, credential: Issued) -> service_account.Credentials:
        return service_account.Credentials.from_service_account_info(
            self._info(credential), scopes=SCOPES
        )

    def _iam(self, credential: Issued) -> Any:
        options = {}
        if self.record.api_endpoint:
            options["api_endpoint"] = self.record.api_endpoint.rstrip("/") + "/"
        return build(
            "iam",
            "v1",
            credentials=self._credentials(credential),
            client_options=options,
            static_discovery=True,
            cache_discovery=False,
        )

    def _keys_of(self, credential: Issued) -> str:
        return f"projects/{self._project(credential)}/serviceAccounts/{self.email}"

    async def _call(self, credential: Issued, op: str, request: Callable[[Any], Any]) -> Any:
        """Run one IAM request authenticated with `credential`; sort errors without
        echoing responses (a create response holds a private key)."""

        def run() -> Any:
            keys = self._iam(credential).projects().serviceAccounts().keys()
            return request(keys).execute()

        try:
            return await asyncio.to_thread(run)
        except HttpError as exc:
            status = exc.resp.status
            if status in _REFUSED_STATUS:
                raise CredentialRefused(
                    f"GCP IAM refused key {credential.ident} ({op}: HTTP {status})"
                ) from None
            if status in _TRANSIENT_STATUS:
                raise TransientError(f"GCP IAM {op}: HTTP {status}") from None
            raise GcpApiError(f"GCP IAM {op} failed: HTTP {status}") from None
        except google.auth.exceptions.RefreshError as exc:
            raise self._refusal(credential, exc) from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"GCP IAM {op}: {type(exc).__name__}") from None
        except OSError as exc:
            raise TransientError(f"GCP IAM {op}: {type(exc).__name__}") from None

    async def _delete(self, credential: Issued, name: str) -> None:
        await self._call(credential, "keys.delete", lambda k: k.delete(name=name))

    def _refusal(self, credential: Issued, exc: google.auth.exceptions.RefreshError) -> Exception:
        if exc.retryable:
            return TransientError(f"GCP token endpoint: retryable error for {credential.ident}")
        return CredentialRefused(
            f"GCP token endpoint refused key {credential.ident} of {self.email}"
        )

    # --- the protocol ------------------------------------------------------------------

    async def current(self) -> Issued:
        info = self.stored.service_account_info
        if info is None:
            raise CredentialRefused(
                f"block {self.record.secret_block!r} holds no service-account key for cluster "
                f"{self.cluster!r}; store the deployer's key file there first"
            )
        key_file = info.get_secret_value()
        return Issued(
            str(key_file.get("private_key_id", self.record.credential_id)),
            SecretStr(json.dumps(key_file)),
            self.record.created_at,
        )

    async def clean_stale(self, current: Issued) -> list[str]:
        name = self._keys_of(current)
        listed = await self._call(
            current, "keys.list", lambda k: k.list(name=name, keyTypes="USER_MANAGED")
        )
        done = []
        for key in listed.get("keys", []):
            key_id = key["name"].rsplit("/", 1)[1]
            if key_id != current.ident:
                await self._delete(current, key["name"])
                done.append(f"deleted stale service-account key {key_id}")
        return done

    async def create(self) -> Issued:
        old = await self.current()
        name = self._keys_of(old)
        body = {
            "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
            "keyAlgorithm": "KEY_ALG_RSA_2048",
        }
        made = await self._call(old, "keys.create", lambda k: k.create(name=name, body=body))
        key_file = base64.b64decode(made["privateKeyData"]).decode()
        created = made.get("validAfterTime")
        return Issued(
            made["name"].rsplit("/", 1)[1],
            SecretStr(key_file),
            datetime.fromisoformat(created.replace("Z", "+00:00"))
            if created
            else datetime.now(UTC),
        )

    async def delete(self, new: Issued) -> None:
        old = await self.current()
        await self._delete(old, f"{self._keys_of(old)}/keys/{new.ident}")

    def stored_with(self, new: Issued) -> GcpCredentials:
        return GcpCredentials(
            service_account_info=json.loads(new.secret.get_secret_value()),
            project=self.stored.project,
        )

    async def verify(self, credential: Issued) -> str:
        creds = self._credentials(credential)
        try:
            await asyncio.to_thread(creds.refresh, Request())
        except google.auth.exceptions.RefreshError as exc:
            raise self._refusal(credential, exc) from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"GCP token endpoint: {type(exc).__name__}") from None
        if creds.service_account_email != self.email or not creds.token:
            raise CredentialRefused(
                f"key {credential.ident} belongs to {creds.service_account_email}"
            )
        return str(creds.service_account_email)

    async def revoke(self, old: Issued) -> None:
        stored = await GcpCredentials.aload(self.record.secret_block)
        assert isinstance(stored, GcpCredentials) and stored.service_account_info is not None
        key_file = stored.service_account_info.get_secret_value()
        assert key_file.get("private_key_id") != old.ident
        new = Issued(str(key_file["private_key_id"]), SecretStr(json.dumps(key_file)))
        await self._delete(new, f"{self._keys_of(new)}/keys/{old.ident}")

    async def refused(self, old: Issued) -> bool:
        try:
            await self.verify(old)
        except CredentialRefused:
            return True
        return False
