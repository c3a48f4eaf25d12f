"""Cluster login and remote state against real emulators.

EKS: the token is checked the way EKS checks it, by calling the presigned STS URL (on moto,
with auth enforced). S3 state: the offline testing module keeps its state in a moto bucket
through terraform's built-in s3 backend.
"""

from __future__ import annotations

import base64
import glob
import os
from pathlib import Path
from typing import Any

import pytest

from tasks.cluster_login import eks_token


def _url_of(token: str) -> str:
    assert token.startswith("k8s-aws-v1.")
    encoded = token.removeprefix("k8s-aws-v1.")
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


@pytest.mark.cloud
def test_eks_token_is_a_presigned_caller_identity_call(moto_server: Any) -> None:
    import boto3

    session = boto3.Session(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    )
    token = eks_token(session, "aws-west", moto_server.region, moto_server.endpoint_url)
    url = _url_of(token.get_secret_value())
    assert "Action=GetCallerIdentity" in url and "x-k8s-aws-id" in url
    assert "X-Amz-Expires=60" in url
    # EKS calls this URL with the header; the header must be part of the signature so
    # the token is good for this cluster only. (moto answers presigned STS GETs with a
    # 500, so the call itself cannot be replayed here; the signature inputs are checked.)
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(url).query)
    assert url.startswith(moto_server.endpoint_url)
    assert query["X-Amz-SignedHeaders"][0].split(";") == ["host", "x-k8s-aws-id"]
    assert query["X-Amz-Credential"][0].startswith(f"{moto_server.access_key_id}/")
    assert f"/{moto_server.region}/sts/aws4_request" in query["X-Amz-Credential"][0]
    other = eks_token(session, "another", moto_server.region, moto_server.endpoint_url)
    assert other.get_secret_value() != token.get_secret_value()


@pytest.mark.cloud
async def test_state_in_an_s3_bucket_on_moto(lab_fleet: Any, moto_server: Any) -> None:
    from prefect_aws import AwsCredentials

    from flows.provision_cluster import provision_cluster

    cluster = lab_fleet.name
    s3 = moto_server.client("s3")
    bucket = f"state-{cluster}"
    s3.create_bucket(Bucket=bucket)
    await AwsCredentials(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
        region_name=moto_server.region,
    ).asave(cluster, overwrite=True)
    lab_fleet(
        terraform=f"  module: testing\n  state: {{type: s3, bucket: {bucket}, "
        f"region: {moto_server.region}, endpoint: '{moto_server.endpoint_url}'}}\n"
    )
    result = await provision_cluster(cluster, action="apply")
    assert result.applied is True
    key = f"hubfleet/{cluster}/terraform.tfstate"
    state = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert b"terraform_data" in state
    # A second plan reads that state back: nothing to do.
    again = await provision_cluster(cluster, action="plan")
    assert again.plan.create == [] and again.needs_approval is False


def _aws_plugin() -> str | None:
    """The hashicorp/aws plugin in a standard local plugin directory, if any."""
    home = Path.home()
    dirs = [
        home / ".terraform.d" / "plugins",
        home / ".local" / "share" / "terraform" / "plugins",
        Path("/usr/local/share/terraform/plugins"),
        Path("/usr/share/terraform/plugins"),
    ]
    for data in os.environ.get("XDG_DATA_DIRS", "").split(":"):
        if data:
            dirs.append(Path(data) / "terraform" / "plugins")
    if os.environ.get("TF_PLUGIN_CACHE_DIR"):
        dirs.append(Path(os.environ["TF_PLUGIN_CACHE_DIR"]))
    for d in dirs:
        found = glob.glob(
            str(d / "registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*")
        )
        if found:
            return str(d)
    return None


@pytest.mark.cloud
def test_eks_network_iam_bucket_on_moto(
    terraform_bin: Path, moto_server: Any, tmp_path: Path
) -> None:
    """The EKS module with deploy_eks=false (network, IAM, bucket) applied against moto.

    Needs the hashicorp/aws provider plugin installed locally: the registry is not
    reachable here, so without it this test reports why it did not run.
    """
    plugins = _aws_plugin()
    if plugins is None:
        pytest.skip(
            "hashicorp/aws provider plugin not found in ~/.terraform.d/plugins, "
            "~/.local/share/terraform/plugins, /usr/local/share/terraform/plugins, "
            "/usr/share/terraform/plugins, $XDG_DATA_DIRS/terraform/plugins or "
            "$TF_PLUGIN_CACHE_DIR, and the registry is unreachable: cannot plan the EKS module"
        )
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    work = tmp_path / "eks"
    shutil.copytree(
        repo / "terraform_modules" / "eks", work, ignore=shutil.ignore_patterns("examples")
    )
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="eks-state")
    endpoint = moto_server.endpoint_url
    services = ["ec2", "iam", "s3", "sts", "eks"]
    endpoints = "".join(f'    {s} = "{endpoint}"\n' for s in services)
    (work / "moto_override.tf").write_text(
        f'provider "aws" {{\n  region = "{moto_server.region}"\n'
        "  skip_credentials_validation = true\n  skip_requesting_account_id = true\n"
        "  skip_metadata_api_check = true\n  s3_use_path_style = true\n"
        f"  endpoints {{\n{endpoints}  }}\n}}\n"
        'terraform {\n  backend "s3" {}\n}\n'
    )
    env = dict(os.environ, **moto_server.env(), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    account = moto_server.client("sts").get_caller_identity()["Account"]

    def tf(*args: str) -> str:
        p = subprocess.run(
            [str(terraform_bin), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    tf(
        "init",
        "-input=false",
        f"-plugin-dir={plugins}",
        "-backend-config=bucket=eks-state",
        "-backend-config=key=eks.tfstate",
        f"-backend-config=region={moto_server.region}",
        "-backend-config=use_path_style=true",
        f'-backend-config=endpoints={{s3="{endpoint}",sts="{endpoint}"}}',
        "-backend-config=skip_credentials_validation=true",
        "-backend-config=skip_requesting_account_id=true",
    )
    variables = [
        "-var=cluster_name=aws-west",
        f"-var=region={moto_server.region}",
        f"-var=account_id={account}",
        "-var=deploy_eks=false",
    ]
    tf("apply", "-input=false", "-auto-approve", *variables)
    assert s3.list_objects_v2(Bucket="eks-state")["KeyCount"] == 1
    iam = moto_server.client("iam")
    assert iam.get_role(RoleName="aws-west-hubfleet-deployer")["Role"]["Arn"]
    tf("destroy", "-input=false", "-auto-approve", *variables)
