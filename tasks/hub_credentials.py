"""The hub's ops service and its token: create, verify, store in a block, revoke, rotate.

Bootstrap (first deploy, or a lost token): `jupyterhub token` mints a token for the
bootstrap admin straight into the hub's database (printed to a pipe we read, never to a
file); with it hubfleet creates an API-managed `hubfleet-ops-<time>` service with a token
it generated, stores that token in a `HubOpsToken` block, and revokes every token of the
bootstrap admin. Older ops services are deleted, which revokes their tokens.

Rotation (`HubOpsTokenRotator`, driven by tasks/rotation.py): the stored token creates a
new ops service, the new token is stored and verified, then the old service is deleted.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from blocks.hub_token import HubOpsToken
from hubfleet.credentials import CredentialKind
from hubfleet.localhub import BOOTSTRAP_USER, OPS_SERVICE_PREFIX
from tasks import jupyterhub_api as api
from tasks.local_hub import LocalHub, LocalHubError
from tasks.rotation import CredentialRefused, Issued, Rotator


async def load_ops_token(cluster: str, hub: str) -> HubOpsToken | None:
    """The stored ops token of a hub, or None if none was ever stored."""
    try:
        return await HubOpsToken.aload(HubOpsToken.block_name(cluster, hub))
    except ValueError:
        return None


@task(task_run_name="ensure-ops-service-{cluster}-{hub}", cache_policy=NO_CACHE)
async def ensure_ops_service(cluster: str, hub: str, local: LocalHub, url: str) -> str:
    """Make sure the hub has a working ops token in its block.

    Changes: possibly the hub's services and tokens, and the `HubOpsToken` block.
    Returns what was done: 'kept' or 'created'.
    """
    logger = get_run_logger()
    stored = await load_ops_token(cluster, hub)
    if stored is not None:
        try:
            me = await asyncio.to_thread(api.whoami, url, stored.token.get_secret_value())
            if me.get("name") == stored.service_name:
                if stored.url != url:  # redeployed on other ports: the block follows the hub
                    stored.url = url
                    await stored.asave(HubOpsToken.block_name(cluster, hub), overwrite=True)
                return "kept"
        except api.TokenRefused:
            logger.warning("stored ops token of %s/%s is refused; issuing a new one", cluster, hub)

    bootstrap = await asyncio.to_thread(_mint_bootstrap_token, local)
    admin = bootstrap  # what revokes the bootstrap tokens at the end
    try:
        name = f"{OPS_SERVICE_PREFIX}-{datetime.now(UTC):%Y%m%d%H%M%S}"
        token = secrets.token_hex(32)
        await asyncio.to_thread(api.create_service, url, bootstrap, name, token)
        await HubOpsToken(
            hub=f"{cluster}/{hub}",
            url=url,
            service_name=name,
            token=SecretStr(token),
            created_at=datetime.now(UTC),
        ).asave(HubOpsToken.block_name(cluster, hub), overwrite=True)
        me = await asyncio.to_thread(api.whoami, url, token)
        if me.get("name") != name:
            raise api.HubApiError(f"new ops token answers as {me.get('name')!r}, not {name!r}")
        admin = token
        for old in await asyncio.to_thread(api.list_services, url, token):
            if old.startswith(OPS_SERVICE_PREFIX) and old != name:
                await asyncio.to_thread(api.delete_service, url, token, old)
                logger.info("deleted old ops service %s (its token is revoked)", old)
    finally:
        revoked = await asyncio.to_thread(api.revoke_user_tokens, url, admin, BOOTSTRAP_USER)
    logger.info(
        "created ops service %s for %s/%s; revoked %d bootstrap token(s)",
        name,
        cluster,
        hub,
        revoked,
    )
    return "created"


def _mint_bootstrap_token(local: LocalHub) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "token", BOOTSTRAP_USER, "-f", str(local.config_file)],
        cwd=local.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or len(token) < 16:
        # stderr is JupyterHub's log: no token in it (the token goes to stdout only).
        raise LocalHubError(
            f"could not mint a bootstrap token for {local.name!r} "
            f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return token


class HubOpsTokenRotator(Rotator):
    """Rotates a hub's ops service token through the JupyterHub REST API.

    New: an API-managed `hubfleet-ops-<time>` service with a fresh token (created with the
    old token). Store: the `HubOpsToken` block. Revoke: delete the old service, which
    revokes its token.
    """

    kind = CredentialKind.hub_ops_token
    #: Health probes that loaded the old token just before the switch finish with it first.
    settle_seconds = 1.0

    def __init__(self, cluster: str, hub: str, url: str):
        super().__init__(cluster, hub)
        self.url = url
        self._stored: HubOpsToken | None = None

    async def current(self) -> Issued:
        assert self.hub is not None
        block = await load_ops_token(self.cluster, self.hub)
        if block is None:
            raise CredentialRefused(
                f"no ops token is stored for hub {self.owner}; deploy the hub first "
                f"(hubfleet deploy {self.cluster} {self.hub})"
            )
        self._stored = block
        return Issued(block.service_name, block.token, block.created_at)

    async def clean_stale(self, current: Issued) -> list[str]:
        """Delete ops services left by an interrupted rotation (their tokens are in no block)."""
        token = current.secret.get_secret_value()
        services = await asyncio.to_thread(api.list_services, self.url, token)
        stale = [s for s in services if s.startswith(OPS_SERVICE_PREFIX) and s != current.ident]
        for name in stale:
            await asyncio.to_thread(api.delete_service, self.url, token, name)
        return [f"deleted stale ops service {name}" for name in stale]

    async def create(self) -> Issued:
        assert self._stored is not None
        name = f"{OPS_SERVICE_PREFIX}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
        token = secrets.token_hex(32)
        admin = self._stored.token.get_secret_value()
        await asyncio.to_thread(api.create_service, self.url, admin, name, token)
        return Issued(name, SecretStr(token))

    async def delete(self, new: Issued) -> None:
        assert self._stored is not None
        admin = self._stored.token.get_secret_value()
        await asyncio.to_thread(api.delete_service, self.url, admin, new.ident)

    async def store(self, new: Issued, previous: Issued) -> None:
        assert self._stored is not None and self.hub is not None
        await HubOpsToken(
            hub=self.owner,
            url=self.url,
            service_name=new.ident,
            token=new.secret,
            created_at=new.created_at,
            last_rotated=datetime.now(UTC),
        ).asave(HubOpsToken.block_name(self.cluster, self.hub), overwrite=True)

    async def restore(self, previous: Issued) -> None:
        assert self._stored is not None and self.hub is not None
        await self._stored.asave(HubOpsToken.block_name(self.cluster, self.hub), overwrite=True)

    async def verify(self, credential: Issued) -> str:
        try:
            me = await asyncio.to_thread(api.whoami, self.url, credential.secret.get_secret_value())
        except api.TokenRefused as exc:
            raise CredentialRefused(f"ops token {credential.ident}: {exc}") from None
        if me.get("name") != credential.ident:
            raise CredentialRefused(f"ops token {credential.ident} answers as {me.get('name')!r}")
        return credential.ident

    async def switch(self, new: Issued) -> list[str]:
        # The block is the only consumer; give runs that read it just before the switch
        # time to finish their call with the old token.
        await asyncio.sleep(self.settle_seconds)
        return []

    async def revoke(self, old: Issued) -> None:
        new = await load_ops_token(self.cluster, self.hub or "")
        assert new is not None and new.service_name != old.ident
        await asyncio.to_thread(
            api.delete_service, self.url, new.token.get_secret_value(), old.ident
        )

    async def refused(self, old: Issued) -> bool:
        try:
            await asyncio.to_thread(api.whoami, self.url, old.secret.get_secret_value())
        except api.TokenRefused:
            return True
        return False
