"""Log in to a freshly provisioned cluster and turn that into a kubeconfig.

One function per provider, each from its credentials block and the module's outputs:

* GKE: an OAuth2 access token from the service account in a `GcpCredentials` block
  (google-auth, scope cloud-platform), as `gke-gcloud-auth-plugin` does.
* EKS: a presigned STS `GetCallerIdentity` URL carrying the `x-k8s-aws-id` header, as
  `aws-iam-authenticator token` does, from an `AwsCredentials` block.
* AKS: the cluster user credentials (`listClusterUserCredential` in the ARM API) with a
  service principal from an `AzureContainerInstanceCredentials` block.
* testing: the stand-in module's `cluster_token` output.

Also: the environment terraform needs for the provider and the state backend. Secrets only
ever travel as SecretStr or in a child process's environment.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from pydantic import SecretStr

from hubfleet.errors import HubfleetError
from hubfleet.model import Cluster
from tasks.terraform import TerraformOutputs

#: Lifetime of an EKS token: the API server refuses a presigned URL older than 15 min.
EKS_TOKEN_SECONDS = 60
AKS_API_VERSION = "2024-02-01"
ARM_ENDPOINT = "https://management.azure.com"


class LoginError(HubfleetError):
    """Logging in to a cluster failed: the credentials block or the outputs are wrong."""


def credentials_block_name(cluster: Cluster) -> str:
    tf = cluster.terraform
    return (tf.credentials_block if tf and tf.credentials_block else None) or cluster.name


async def _load(block_type: Any, name: str, what: str) -> Any:
    try:
        return await block_type.aload(name)
    except ValueError:
        raise LoginError(
            f"no {block_type.__name__} block named {name!r}: create it ({what}) or set "
            "terraform.credentials_block in cluster.yaml. Nothing was changed."
        ) from None


async def provider_credentials_env(cluster: Cluster) -> dict[str, str]:
    """Environment for terraform: credentials of the module's cloud and of its state bucket."""
    tf = cluster.terraform
    if tf is None:
        return {}
    clouds = {{"gke": "gcp", "eks": "aws", "aks": "azure"}.get(tf.module)}
    clouds.add({"gcs": "gcp", "s3": "aws", "azurerm": "azure"}.get(tf.state.type))
    name = credentials_block_name(cluster)
    env: dict[str, str] = {}
    if "gcp" in clouds:
        from prefect_gcp import GcpCredentials

        gcp = await _load(GcpCredentials, name, "a service account key of the deployer")
        if gcp.service_account_info:
            env["GOOGLE_CREDENTIALS"] = json.dumps(gcp.service_account_info.get_secret_value())
        if gcp.project:
            env["GOOGLE_PROJECT"] = gcp.project
    if "aws" in clouds:
        from prefect_aws import AwsCredentials

        aws = await _load(AwsCredentials, name, "access keys of the deployer")
        frozen = aws.get_boto3_session().get_credentials().get_frozen_credentials()
        env |= {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
        if aws.region_name:
            env["AWS_REGION"] = aws.region_name
    if "azure" in clouds:
        from prefect_azure import AzureContainerInstanceCredentials

        azure = await _load(AzureContainerInstanceCredentials, name, "a service principal")
        env |= {
            "ARM_CLIENT_ID": azure.client_id or "",
            "ARM_TENANT_ID": azure.tenant_id or "",
            "ARM_CLIENT_SECRET": azure.client_secret.get_secret_value()
            if azure.client_secret
            else "",
        }
        if cluster.azure:
            env["ARM_SUBSCRIPTION_ID"] = cluster.azure.subscription_id
    return env


# --- kubeconfig -------------------------------------------------------------------------


def token_kubeconfig(name: str, server: str, ca_b64: str, token: str) -> str:
    """A kubeconfig with one cluster, one bearer-token user and one context, all `name`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": ca_b64}}
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(config, sort_keys=False)


def _server(endpoint: str) -> str:
    return endpoint if endpoint.startswith("https://") else f"https://{endpoint}"


def _need(outputs: TerraformOutputs, *names: str) -> None:
    missing = [n for n in names if n not in outputs.public and n not in outputs.sensitive]
    if missing:
        raise LoginError(
            f"the module's outputs lack {', '.join(missing)}; the cluster module must output "
            "them (see terraform_modules/README)"
        )


def _value(outputs: TerraformOutputs, name: str) -> str:
    if name in outputs.sensitive:
        return outputs.sensitive[name].get_secret_value()
    return str(outputs.public[name])


# --- per provider -----------------------------------------------------------------------


def gke_token(service_account_info: dict[str, Any]) -> SecretStr:
    """An OAuth2 access token (cloud-platform scope) for a service account (google-auth)."""
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_info(
        service_account_info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    try:
        creds.refresh(Request())
    except Exception as exc:  # google.auth raises several types; all mean "no token"
        raise LoginError(
            f"GKE login failed for service account {service_account_info.get('client_email')}:"
            f" {type(exc).__name__}; check the key in the GcpCredentials block"
        ) from None
    return SecretStr(creds.token)


def eks_token(
    session: Any, cluster_name: str, region: str, endpoint_url: str | None = None
) -> SecretStr:
    """A bearer token for EKS: `k8s-aws-v1.` + base64url(presigned GetCallerIdentity URL).

    The URL is signed with the header `x-k8s-aws-id: <cluster>` so it is only good for this
    cluster; EKS calls it to learn who we are (aws-iam-authenticator's scheme).
    """
    sts = session.client(
        "sts",
        region_name=region,
        endpoint_url=endpoint_url or f"https://sts.{region}.amazonaws.com",
    )

    def add_cluster_header(request: Any, **_: Any) -> None:
        request.headers["x-k8s-aws-id"] = cluster_name

    event = "before-sign.sts.GetCallerIdentity"
    sts.meta.events.register(event, add_cluster_header)
    try:
        url = sts.generate_presigned_url(
            "get_caller_identity", Params={}, ExpiresIn=EKS_TOKEN_SECONDS, HttpMethod="GET"
        )
    finally:
        sts.meta.events.unregister(event, add_cluster_header)
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    return SecretStr("k8s-aws-v1." + encoded)


def aks_user_kubeconfig(
    subscription_id: str,
    resource_group: str,
    cluster_name: str,
    access_token: SecretStr,
    arm_endpoint: str = ARM_ENDPOINT,
) -> SecretStr:
    """The cluster user kubeconfig from ARM `listClusterUserCredential` (POST)."""
    import requests

    url = (
        f"{arm_endpoint}/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.ContainerService/managedClusters/{cluster_name}"
        f"/listClusterUserCredential?api-version={AKS_API_VERSION}"
    )
    response = requests.post(
        url,
        headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
        timeout=30,
    )
    if response.status_code != 200:
        raise LoginError(
            f"AKS login for {resource_group}/{cluster_name} failed: HTTP "
            f"{response.status_code}; the deployer service principal needs the 'Azure "
            "Kubernetes Service Cluster User Role' on the cluster"
        )
    kubeconfigs = response.json().get("kubeconfigs") or []
    if not kubeconfigs:
        raise LoginError(f"AKS returned no kubeconfig for {resource_group}/{cluster_name}")
    return SecretStr(base64.b64decode(kubeconfigs[0]["value"]).decode())


def azure_management_token(client_id: str, tenant_id: str, client_secret: SecretStr) -> SecretStr:
    """An ARM access token for a service principal (azure-identity)."""
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(tenant_id, client_id, client_secret.get_secret_value())
    return SecretStr(credential.get_token(f"{ARM_ENDPOINT}/.default").token)


# --- the step the flow calls ------------------------------------------------------------


async def cluster_kubeconfig(cluster: Cluster, outputs: TerraformOutputs) -> tuple[SecretStr, str]:
    """Log in with the cluster's credentials block; return (kubeconfig, API server URL)."""
    tf = cluster.terraform
    assert tf is not None
    name = credentials_block_name(cluster)
    if tf.module == "testing":
        _need(outputs, "cluster_endpoint", "cluster_ca_certificate", "cluster_token")
        server = _value(outputs, "cluster_endpoint")
        ca = _value(outputs, "cluster_ca_certificate")
        static = _value(outputs, "cluster_token")
        return SecretStr(token_kubeconfig(cluster.name, server, ca, static)), server
    _need(outputs, "cluster_endpoint", "cluster_ca_certificate")
    server = _server(_value(outputs, "cluster_endpoint"))
    ca = _value(outputs, "cluster_ca_certificate")
    if tf.module == "gke":
        from prefect_gcp import GcpCredentials

        gcp = await _load(GcpCredentials, name, "a service account key of the deployer")
        if not gcp.service_account_info:
            raise LoginError(f"GcpCredentials block {name!r} has no service_account_info")
        token = gke_token(gcp.service_account_info.get_secret_value())
        kubeconfig = token_kubeconfig(cluster.name, server, ca, token.get_secret_value())
        return SecretStr(kubeconfig), server
    if tf.module == "eks":
        from prefect_aws import AwsCredentials

        aws = await _load(AwsCredentials, name, "access keys of the deployer")
        assert cluster.aws is not None
        token = eks_token(
            aws.get_boto3_session(),
            _value(outputs, "cluster_name"),
            cluster.aws.region,
            aws.aws_client_parameters.endpoint_url,
        )
        kubeconfig = token_kubeconfig(cluster.name, server, ca, token.get_secret_value())
        return SecretStr(kubeconfig), server
    from prefect_azure import AzureContainerInstanceCredentials

    azure = await _load(AzureContainerInstanceCredentials, name, "a service principal")
    assert cluster.azure is not None and azure.client_secret is not None
    arm = azure_management_token(azure.client_id or "", azure.tenant_id or "", azure.client_secret)
    kubeconfig_secret = aks_user_kubeconfig(
        cluster.azure.subscription_id,
        cluster.azure.resource_group,
        _value(outputs, "cluster_name"),
        arm,
    )
    return kubeconfig_secret, server
