"""Rotating the aws-west cluster's deployer access key against moto with auth enforced.

moto runs as a real server (testenv MotoServer): every call after the admin
bootstrap must be signed with a valid key, so a deleted key really is refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from flows.rotate_credentials import RotationsFailed, rotate_credentials
from hubfleet.credentials import CredentialKind
from tasks.aws_iam import AwsAccessKeyRotator
from tasks.rotation import CredentialRefused, Issued
from testenv.emulators import MotoServer

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.cloud]

SELF_ROTATE = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "iam:CreateAccessKey",
                "iam:ListAccessKeys",
                "iam:UpdateAccessKey",
                "iam:DeleteAccessKey",
            ],
            "Resource": "*",
        },
        {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
    ],
}


@pytest.fixture
async def deployer(
    moto_server: MotoServer, secret_ledger: set[str]
) -> AsyncIterator[dict[str, Any]]:
    """A fresh deployer IAM user with one key, registered as aws-west's credential."""
    iam = moto_server.client("iam")
    user = f"hubfleet-deployer-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user, PolicyName="self-rotate", PolicyDocument=json.dumps(SELF_ROTATE)
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    secret_ledger.add(key["SecretAccessKey"])
    await AwsCredentials(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=SecretStr(key["SecretAccessKey"]),
        region_name=moto_server.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_server.endpoint_url),
    ).asave("aws-west-deployer", overwrite=True)
    await DeployerCredential(
        cluster="aws-west",
        kind=CredentialKind.aws_access_key,
        principal=user,
        credential_id=key["AccessKeyId"],
        secret_block="aws-west-deployer",
        created_at=datetime.now(UTC) - timedelta(days=120),
        consumed_by=["terraform:aws-west", "eks-token:aws-west"],
    ).asave("aws-west-deployer", overwrite=True)
    yield {"user": user, "id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def caller(moto: MotoServer, key_id: str, secret: str) -> str:
    return str(moto.client("sts", key_id, secret).get_caller_identity()["Arn"])


def refusal(moto: MotoServer, key_id: str, secret: str) -> str:
    with pytest.raises(ClientError) as err:
        moto.client("sts", key_id, secret).get_caller_identity()
    return str(err.value.response["Error"]["Code"])


async def test_rotation_with_a_stale_second_key(
    moto_server: MotoServer, deployer: dict[str, Any], secret_ledger: set[str]
) -> None:
    iam = moto_server.client("iam")
    # A key left over from an interrupted rotation: without cleaning it up, AWS's limit of
    # two keys per user would make CreateAccessKey fail.
    stale = iam.create_access_key(UserName=deployer["user"])["AccessKey"]
    secret_ledger.add(stale["SecretAccessKey"])

    # Due by policy (created 120 days ago, policy 90): no max_age needed.
    result = await rotate_credentials(scope="cluster:aws-west", operator="dave")
    [done] = result.rotated
    assert done.old == deployer["id"] and done.new != deployer["id"]
    assert f"deleted stale access key {stale['AccessKeyId']} (Active)" in done.cleaned

    stored = await AwsCredentials.aload("aws-west-deployer")
    assert stored.aws_access_key_id == done.new
    new_secret = stored.aws_secret_access_key.get_secret_value()
    # The new key calls STS; the old one is refused with InvalidClientTokenId.
    assert caller(moto_server, done.new, new_secret).endswith(f":user/{deployer['user']}")
    assert refusal(moto_server, deployer["id"], deployer["secret"]) == "InvalidClientTokenId"
    # The block holds only the new key, and the user has only that key.
    keys = iam.list_access_keys(UserName=deployer["user"])["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [done.new]
    assert deployer["secret"] not in stored.model_dump_json()
    record = await DeployerCredential.aload("aws-west-deployer")
    assert record.credential_id == done.new and record.last_rotated is not None


async def test_failed_verification_deletes_the_new_key(
    moto_server: MotoServer, deployer: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection at the adapter: STS verification of the new key is made to fail."""
    real_verify = AwsAccessKeyRotator.verify

    async def refuse_new(self: AwsAccessKeyRotator, credential: Issued) -> str:
        if credential.ident != deployer["id"]:
            raise CredentialRefused(f"injected fault: refusing {credential.ident}")
        return await real_verify(self, credential)

    monkeypatch.setattr(AwsAccessKeyRotator, "verify", refuse_new)
    with pytest.raises(RotationsFailed, match="deleted the new credential AKIA"):
        await rotate_credentials(scope="cluster:aws-west")
    keys = moto_server.client("iam").list_access_keys(UserName=deployer["user"])
    assert [k["AccessKeyId"] for k in keys["AccessKeyMetadata"]] == [deployer["id"]]
    assert caller(moto_server, deployer["id"], deployer["secret"]).endswith(deployer["user"])
    stored = await AwsCredentials.aload("aws-west-deployer")
    assert stored.aws_access_key_id == deployer["id"]
    assert stored.aws_secret_access_key.get_secret_value() == deployer["secret"]
