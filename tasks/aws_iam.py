"""AWS IAM access keys of a cluster's deployer user, rotated through boto3.

The deployer rotates its own key: the current key creates the new one, the new one
deletes the old one (the user needs iam:CreateAccessKey, iam:ListAccessKeys,
iam:UpdateAccessKey and iam:DeleteAccessKey on itself). The secret lives in a prefect-aws
`AwsCredentials` block; its identity and age in the cluster's `DeployerCredential` block.

AWS allows at most two keys per user, so a key left by an interrupted rotation (or made by
hand) would make `CreateAccessKey` fail with LimitExceeded. The deployer user belongs to
hubfleet alone, so a key that is not the stored one is stale: it is deleted first, and the
run says so.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from prefect_aws import AwsCredentials
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from hubfleet.credentials import CredentialKind
from tasks.retry import TransientError
from tasks.rotation import CredentialRefused, DeployerKeyRotator, Issued

#: Error codes meaning "this key is not (or no longer) valid".
REFUSED_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "AuthFailure"}
_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
}


class AwsAccessKeyRotator(DeployerKeyRotator[AwsCredentials]):
    """Rotates the deployer IAM user's access key (create, STS check, delete)."""

    kind = CredentialKind.aws_access_key
    stored_type = AwsCredentials

    def __init__(self, record: DeployerCredential, stored: AwsCredentials):
        super().__init__(record, stored)
        self.user = record.principal

    # --- boto3, with errors sorted into refused / transient / other ----------------------

    def _client(self, service: str, credential: Issued) -> Any:
        params = self.stored.aws_client_parameters.get_params_override()
        import boto3

        return boto3.client(
            service,
            region_name=self.stored.region_name,
            aws_access_key_id=credential.ident,
            aws_secret_access_key=credential.secret.get_secret_value(),
            **params,
        )

    async def _call(self, service: str, credential: Issued, op: str, **kwargs: Any) -> Any:
        def run() -> Any:
            return getattr(self._client(service, credential), op)(**kwargs)

        try:
            return await asyncio.to_thread(run)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in REFUSED_CODES:
                raise CredentialRefused(
                    f"AWS refused access key {credential.ident} ({service}:{op}: {code})"
                ) from None
            if code in _TRANSIENT_CODES:
                raise TransientError(f"AWS {service}:{op}: {code}") from None
            raise
        except EndpointConnectionError as exc:
            raise TransientError(f"AWS {service}:{op}: {exc}") from None
        except BotoCoreError as exc:
            raise TransientError(f"AWS {service}:{op}: {type(exc).__name__}") from None

    # --- the protocol ------------------------------------------------------------------

    async def current(self) -> Issued:
        secret = self.stored.aws_secret_access_key
        if not self.stored.aws_access_key_id or secret is None:
            raise CredentialRefused(
                f"block {self.record.secret_block!r} holds no access key for cluster "
                f"{self.cluster!r}; store the deployer's key there first"
            )
        return Issued(self.stored.aws_access_key_id, secret, self.record.created_at)

    async def clean_stale(self, current: Issued) -> list[str]:
        keys = await self._call("iam", current, "list_access_keys", UserName=self.user)
        done = []
        for key in keys["AccessKeyMetadata"]:
            if key["AccessKeyId"] != current.ident:
                await self._call(
                    "iam",
                    current,
                    "delete_access_key",
                    UserName=self.user,
                    AccessKeyId=key["AccessKeyId"],
                )
                done.append(f"deleted stale access key {key['AccessKeyId']} ({key['Status']})")
        return done

    async def create(self) -> Issued:
        old = await self.current()
        made = await self._call("iam", old, "create_access_key", UserName=self.user)
        key = made["AccessKey"]
        created = key.get("CreateDate") or datetime.now(UTC)
        return Issued(key["AccessKeyId"], SecretStr(key["SecretAccessKey"]), created)

    async def delete(self, new: Issued) -> None:
        old = await self.current()
        await self._call("iam", old, "delete_access_key", UserName=self.user, AccessKeyId=new.ident)

    def stored_with(self, new: Issued) -> AwsCredentials:
        fields = self.stored.model_dump(exclude={"aws_access_key_id", "aws_secret_access_key"})
        fields.pop("block_type_slug", None)
        return AwsCredentials(
            **fields, aws_access_key_id=new.ident, aws_secret_access_key=new.secret
        )

    async def verify(self, credential: Issued) -> str:
        me = await self._call("sts", credential, "get_caller_identity")
        arn = str(me["Arn"])
        if not arn.endswith(f":user/{self.user}"):
            raise CredentialRefused(f"access key {credential.ident} belongs to {arn}")
        return arn

    async def revoke(self, old: Issued) -> None:
        stored: AwsCredentials = await AwsCredentials.aload(self.record.secret_block)
        assert stored.aws_secret_access_key is not None
        assert stored.aws_access_key_id and stored.aws_access_key_id != old.ident
        new = Issued(stored.aws_access_key_id, stored.aws_secret_access_key)
        # Deactivate first: if the delete fails, the key is already unusable.
        await self._call(
            "iam",
            new,
            "update_access_key",
            UserName=self.user,
            AccessKeyId=old.ident,
            Status="Inactive",
        )
        await self._call("iam", new, "delete_access_key", UserName=self.user, AccessKeyId=old.ident)

    async def refused(self, old: Issued) -> bool:
        try:
            await self._call("sts", old, "get_caller_identity")
        except CredentialRefused:
            return True
        return False
