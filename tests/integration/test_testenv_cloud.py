"""Proof that the cloud emulators are real servers that enforce credentials:
moto (IAM, STS, S3) and Azurite (Blob, through azure-storage-blob as prefect-azure uses it)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.cloud


def test_moto_admin_credentials_work(moto_server):
    ident = moto_server.client("sts").get_caller_identity()
    assert ident["Arn"].endswith(f":user/{moto_server.admin_user}")

    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="hub-exports")
    s3.put_object(Bucket="hub-exports", Key="hub1/export.tar", Body=b"data")
    assert s3.get_object(Bucket="hub-exports", Key="hub1/export.tar")["Body"].read() == b"data"


@pytest.mark.parametrize(
    "service,call", [("sts", "get_caller_identity"), ("s3", "list_buckets"), ("iam", "list_users")]
)
def test_moto_refuses_unknown_access_key(moto_server, service, call):
    bad = moto_server.client(
        service, access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key="wrong"
    )
    with pytest.raises(ClientError) as exc:
        getattr(bad, call)()
    assert exc.value.response["Error"]["Code"] in {"InvalidClientTokenId", "InvalidAccessKeyId"}
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_moto_refuses_wrong_secret_for_real_key(moto_server):
    bad = moto_server.client(
        "s3", access_key_id=moto_server.access_key_id, secret_access_key="not-the-secret"
    )
    with pytest.raises(ClientError) as exc:
        bad.list_buckets()
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_moto_enforces_iam_policy(moto_server):
    """A valid user whose policy only allows listing buckets is denied writes.

    (`s3:List*`: moto 5.2.6 no longer authorizes ListBuckets as AWS's
    `s3:ListAllMyBuckets` alone; the enforcement checked here is the same.)"""
    iam = moto_server.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="list-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:List*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    moto_server.client("s3").create_bucket(Bucket="reader-test")

    s3 = moto_server.client("s3", key["AccessKeyId"], key["SecretAccessKey"])
    assert "reader-test" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="reader-test", Key="x", Body=b"x")
    assert exc.value.response["Error"]["Code"] == "AccessDenied"

    # Deleting the key revokes it.
    iam.delete_access_key(UserName="reader", AccessKeyId=key["AccessKeyId"])
    with pytest.raises(ClientError):
        s3.list_buckets()


def test_moto_env_points_sdks_at_server(moto_server, monkeypatch):
    for k, v in moto_server.env().items():
        monkeypatch.setenv(k, v)
    assert (
        boto3.client("sts").get_caller_identity()["Arn"].endswith(f":user/{moto_server.admin_user}")
    )


def test_azurite_blob_upload_list_download(azurite):
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = svc.create_container("hub-exports")
    container.upload_blob("hub1/export.tar", b"notebooks")
    container.upload_blob("hub2/export.tar", b"more")
    assert sorted(b.name for b in container.list_blobs()) == ["hub1/export.tar", "hub2/export.tar"]
    assert [b.name for b in container.list_blobs(name_starts_with="hub1/")] == ["hub1/export.tar"]
    assert container.download_blob("hub1/export.tar").readall() == b"notebooks"


def test_azurite_refuses_wrong_account_key(azurite):
    import base64

    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.storage.blob import BlobServiceClient

    wrong = base64.b64encode(b"x" * 64).decode()
    svc = BlobServiceClient(
        account_url=azurite.blob_endpoint,
        credential={"account_name": azurite.account_name, "account_key": wrong},
    )
    with pytest.raises((ClientAuthenticationError, HttpResponseError)) as exc:
        svc.create_container("should-not-exist")
    assert exc.value.status_code == 403


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "localhost", "10.0.0.300"])
def test_emulators_refuse_a_wildcard_or_a_name(host):
    """An emulator listens on one address of this machine, never on every interface."""
    from testenv.emulators import Azurite, MotoServer

    for server in (MotoServer, Azurite):
        with pytest.raises(ValueError, match=r"wildcard|not an IPv4 address"):
            server(host=host)


def test_an_address_that_is_not_this_machines_is_refused_before_anything_starts():
    """Binding the free port proves the address is local: 192.0.2.1 (TEST-NET-1) is not."""
    from testenv.emulators import MotoServer

    with pytest.raises(OSError):
        MotoServer(host="192.0.2.1")
