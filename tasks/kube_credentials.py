"""A kubeconfig cluster's deployer token (a service-account token Secret), rotated through
the Kubernetes API with the official `kubernetes` client.

New: a `kubernetes.io/service-account-token` Secret for the deployer's service account,
filled by the cluster's token controller. Store: the `ClusterAccess` block's kubeconfig
(the context's user token) and the `DeployerCredential` record. Switch: every Kubernetes
Secret listed as `secret:<namespace>/<name>` in `consumed_by` (key `token`). Revoke:
delete the old token Secret; the API server's service-account lookup then refuses the old
token. Verify: a SelfSubjectReview made with the token must name the service account.

The deployer needs, in its namespace: create/get/delete on secrets (and update on the
consumer Secrets); a bound TokenRequest token could not be revoked early, which is why a
Secret-backed token is used.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from datetime import UTC, datetime
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr
from urllib3.exceptions import HTTPError

from blocks.cluster_access import ClusterAccess
from blocks.deployer_credential import DeployerCredential
from hubfleet.credentials import CredentialKind
from tasks.retry import TransientError
from tasks.rotation import CredentialRefused, DeployerKeyRotator, Issued

#: How long the token controller may take to fill a new token Secret.
TOKEN_WAIT_SECONDS = 30.0


class KubeTokenRotator(DeployerKeyRotator[ClusterAccess]):
    """Rotates the deployer service account's token of a `kubeconfig` cluster."""

    kind = CredentialKind.kube_service_account_token
    stored_type = ClusterAccess

    def __init__(self, record: DeployerCredential, access: ClusterAccess):
        super().__init__(record, access)
        self.namespace, _, self.service_account = record.principal.partition("/")
        self.kubeconfig: dict[str, Any] = yaml.safe_load(access.kubeconfig.get_secret_value())

    @classmethod
    async def load_stored(cls, name: str) -> ClusterAccess:
        return await ClusterAccess.for_cluster(name)

    # --- kubeconfig and clients ---------------------------------------------------------

    def _user(self, kubeconfig: dict[str, Any]) -> dict[str, Any]:
        """The user entry of the block's context (where the token lives)."""
        context = next(c for c in kubeconfig["contexts"] if c["name"] == self.stored.context)
        name = context["context"]["user"]
        user = next(u for u in kubeconfig["users"] if u["name"] == name)
        return dict(user["user"])

    def _with_token(self, token: str) -> dict[str, Any]:
        changed = copy.deepcopy(self.kubeconfig)
        context = next(c for c in changed["contexts"] if c["name"] == self.stored.context)
        for user in changed["users"]:
            if user["name"] == context["context"]["user"]:
                user["user"] = {"token": token}
        return changed

    def _api(self, credential: Issued) -> client.ApiClient:
        return config.new_client_from_config_dict(
            self._with_token(credential.secret.get_secret_value()), context=self.stored.context
        )

    async def _call(self, credential: Issued, fn: Any) -> Any:
        """Run `fn(api_client)` in a thread; sort failures into refused/transient/other."""

        def run() -> Any:
            with self._api(credential) as api:
                return fn(api)

        try:
            return await asyncio.to_thread(run)
        except ApiException as exc:
            if exc.status == 401:
                raise CredentialRefused(
                    f"the API server refused token {credential.ident} (HTTP 401)"
                ) from None
            if exc.status in (429, 500, 502, 503, 504):
                raise TransientError(f"Kubernetes API: HTTP {exc.status} {exc.reason}") from None
            raise RuntimeError(f"Kubernetes API: HTTP {exc.status} {exc.reason}") from None
        except HTTPError as exc:
            raise TransientError(f"Kubernetes API unreachable: {type(exc).__name__}") from None

    # --- the protocol ------------------------------------------------------------------

    async def current(self) -> Issued:
        token = self._user(self.kubeconfig).get("token")
        if not token:
            raise CredentialRefused(
                f"the kubeconfig of cluster {self.cluster!r} has no token for context "
                f"{self.stored.context!r}; store the deployer's token there first"
            )
        return Issued(self.record.credential_id, SecretStr(token), self.record.created_at)

    async def create(self) -> Issued:
        old = await self.current()
        name = f"{self.service_account}-token-{datetime.now(UTC):%Y%m%d%H%M%S%f}"

        def make(api: client.ApiClient) -> str:
            core = client.CoreV1Api(api)
            core.create_namespaced_secret(
                self.namespace,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(
                        name=name,
                        annotations={"kubernetes.io/service-account.name": self.service_account},
                        labels={"app.kubernetes.io/managed-by": "hubfleet"},
                    ),
                    type="kubernetes.io/service-account-token",
                ),
            )
            deadline = time.monotonic() + TOKEN_WAIT_SECONDS
            while time.monotonic() < deadline:
                secret = core.read_namespaced_secret(name, self.namespace)
                if secret.data and secret.data.get("token"):
                    return base64.b64decode(secret.data["token"]).decode()
                time.sleep(0.2)
            raise TransientError(
                f"token controller did not fill Secret {self.namespace}/{name} within "
                f"{TOKEN_WAIT_SECONDS:g}s"
            )

        try:
            token = await self._call(old, make)
        except TransientError:
            await self.delete(Issued(name, SecretStr("")))
            raise
        return Issued(name, SecretStr(token))

    async def delete(self, new: Issued) -> None:
        old = await self.current()
        await self._call(old, lambda api: self._delete_secret(api, new.ident))

    def _delete_secret(self, api: client.ApiClient, name: str) -> None:
        try:
            client.CoreV1Api(api).delete_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def stored_with(self, new: Issued) -> ClusterAccess:
        kubeconfig = yaml.safe_dump(self._with_token(new.secret.get_secret_value()))
        return ClusterAccess(
            kubeconfig=SecretStr(kubeconfig), context=self.stored.context, server=self.stored.server
        )

    async def verify(self, credential: Issued) -> str:
        def review(api: client.ApiClient) -> str:
            result = client.AuthenticationV1Api(api).create_self_subject_review(
                client.V1SelfSubjectReview()
            )
            status = result.status
            user = status.user_info if status else None
            return str(user.username if user else "")

        who = await self._call(credential, review)
        expected = f"system:serviceaccount:{self.namespace}:{self.service_account}"
        if who != expected:
            raise CredentialRefused(f"token {credential.ident} authenticates as {who!r}")
        return str(who)

    def _consumers(self) -> list[tuple[str, str]]:
        found = []
        for consumer in self.record.consumed_by:
            kind, _, where = consumer.partition(":")
            if kind == "secret":
                namespace, _, name = where.partition("/")
                found.append((namespace, name))
        return found

    def _patch_consumers(self, api: client.ApiClient, token: str) -> list[str]:
        core = client.CoreV1Api(api)
        encoded = base64.b64encode(token.encode()).decode()
        for namespace, name in self._consumers():
            core.patch_namespaced_secret(name, namespace, {"data": {"token": encoded}})
        return [f"secret:{ns}/{name}" for ns, name in self._consumers()]

    async def switch(self, new: Issued) -> list[str]:
        token = new.secret.get_secret_value()
        return list(await self._call(new, lambda api: self._patch_consumers(api, token)))

    async def unswitch(self, previous: Issued) -> None:
        token = previous.secret.get_secret_value()
        await self._call(previous, lambda api: self._patch_consumers(api, token))

    async def revoke(self, old: Issued) -> None:
        stored = await ClusterAccess.for_cluster(self.record.secret_block)
        token = self._user(yaml.safe_load(stored.kubeconfig.get_secret_value()))["token"]
        assert token != old.secret.get_secret_value()
        new = Issued("new", SecretStr(token))
        await self._call(new, lambda api: self._delete_secret(api, old.ident))

    async def refused(self, old: Issued) -> bool:
        try:
            await self.verify(old)
        except CredentialRefused:
            return True
        return False
