"""The hub's ops token: issue, verify, store in a block, revoke, rotate.

hubfleet operates a hub as its `hubfleet-ops` user, whose role (hubfleet/localhub.py
OPS_SCOPES) holds only what the health levels and operations need: it cannot make anyone
admin or delete users. Its tokens are issued through the REST API with an expiry
(OPS_TOKEN_LIFETIME), so each can be revoked by id.

Bootstrap (first deploy, a lost or refused token, or one close to its expiry): `jupyterhub
token` mints a token for the bootstrap admin straight into the hub's database (printed to a
pipe we read, never to a file); with it hubfleet issues a `hubfleet-ops` token, stores it
in a `HubOpsToken` block, revokes every other `hubfleet-ops` token, and the bootstrap admin
revokes all of its own tokens.

Rotation (`HubOpsTokenRotator`, driven by tasks/rotation.py): the stored token issues its
successor, the new token is stored and verified, then the old one is revoked. The weekly
rotation (policy: 30 days) renews a token long before its expiry.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from blocks.hub_token import HubOpsToken
from hubfleet.credentials import CredentialKind
from hubfleet.errors import HubfleetError
from hubfleet.localhub import BOOTSTRAP_USER, OPS_SCOPES, OPS_USER
from tasks import jupyterhub_api as api
from tasks.local_hub import LocalHub, LocalHubError
from tasks.rotation import CredentialRefused, Issued, Rotator

#: How long an ops token is accepted. Rotation (every 30 days by policy) and every deploy
#: (within RENEW_BEFORE of the end) replace it long before.
OPS_TOKEN_LIFETIME = timedelta(days=90)
RENEW_BEFORE = timedelta(days=14)


async def load_ops_token(cluster: str, hub: str) -> HubOpsToken | None:
    """The stored ops token of a hub, or None if none was ever stored."""
    try:
        return await HubOpsToken.aload(HubOpsToken.block_name(cluster, hub))
    except ValueError:
        return None


@task(task_run_name="revoke-ops-token-{cluster}-{hub}", cache_policy=NO_CACHE)
async def revoke_ops_token(cluster: str, hub: str, url: str | None) -> str:
    """Revoke the hub's stored ops token at `url` (where the hub answers now: its port, the
    domain or a port-forward, see `tasks.hub_access.hub_endpoint`) and check it is refused.

    Changes: the hub's tokens (the ops token is gone). The block is deleted by the caller,
    after the hub is gone. A hub that cannot be reached is reported, not an error: its
    database, and the token with it, goes with the hub's state.
    """
    block = await load_ops_token(cluster, hub)
    if block is None:
        return "no ops token stored"
    if url is None:
        return "hub not running; its database (and the token) removed with its state"
    token = block.token.get_secret_value()
    try:
        await asyncio.to_thread(api.revoke_token, url, token, OPS_USER, block.token_id)
    except api.TokenRefused:
        return f"ops token {block.token_id}: already refused"
    except api.HubApiError as exc:
        get_run_logger().warning("could not revoke the ops token: %s", exc)
        return f"ops token {block.token_id} not revoked ({exc}); hub database removed"
    except Exception as exc:  # hub down: its database is deleted with its state
        get_run_logger().warning("hub unreachable for revocation: %s", type(exc).__name__)
        return "hub unreachable; its database (and the token) removed with its state"
    try:
        await asyncio.to_thread(api.whoami, url, token)
    except api.TokenRefused:
        return f"ops token {block.token_id} revoked; it is refused"
    raise HubfleetError(f"{cluster}/{hub}: the ops token still works after it was revoked")


async def delete_ops_token_block(cluster: str, hub: str) -> bool:
    """Delete the hub's `HubOpsToken` block, if any (the hub is gone). True if deleted."""
    if await load_ops_token(cluster, hub) is None:
        return False
    await HubOpsToken.adelete(HubOpsToken.block_name(cluster, hub))
    return True


def issue_ops_token(url: str, issuer: str) -> tuple[str, str, datetime]:
    """A new `hubfleet-ops` token issued with `issuer`: (id, token, expires_at)."""
    now = datetime.now(UTC)
    token_id, token = api.issue_token(
        url, issuer, OPS_USER, OPS_SCOPES, int(OPS_TOKEN_LIFETIME.total_seconds()),
        f"hubfleet ops token {now:%Y-%m-%dT%H:%M:%SZ}",
    )  # fmt: skip
    return token_id, token, now + OPS_TOKEN_LIFETIME


@task(task_run_name="ensure-ops-token-{cluster}-{hub}", cache_policy=NO_CACHE)
async def ensure_ops_service(
    cluster: str,
    hub: str,
    mint: Callable[[], str],
    url: str,
    store_url: str | None = None,
) -> str:
    """Make sure the hub has a working, unexpired ops token in its block.

    mint: mints a bootstrap token in the hub's database (`local_minter`, `kube_minter`).
    url: where the hub answers now; store_url: where the block says it lives (default url;
    a Kubernetes hub reached by port-forward is stored at its domain).
    Changes: possibly the hub's tokens and the `HubOpsToken` block.
    Returns what was done: 'kept' or 'created'.
    """
    store_url = store_url or url
    logger = get_run_logger()
    stored = await load_ops_token(cluster, hub)
    if stored is not None:
        try:
            me = await asyncio.to_thread(api.whoami, url, stored.token.get_secret_value())
            fresh = stored.expires_at is None or (
                stored.expires_at - datetime.now(UTC) > RENEW_BEFORE
            )
            if me.get("name") == OPS_USER and fresh:
                if stored.url != store_url:  # redeployed on other ports: the block follows
                    stored.url = store_url
                    await stored.asave(HubOpsToken.block_name(cluster, hub), overwrite=True)
                return "kept"
            if not fresh:
                logger.info("ops token of %s/%s expires soon; issuing a new one", cluster, hub)
        except api.TokenRefused:
            logger.warning("stored ops token of %s/%s is refused; issuing a new one", cluster, hub)

    bootstrap = await asyncio.to_thread(mint)
    try:
        token_id, token, expires = await asyncio.to_thread(issue_ops_token, url, bootstrap)
        await HubOpsToken(
            hub=f"{cluster}/{hub}",
            url=store_url,
            token_id=token_id,
            token=SecretStr(token),
            created_at=datetime.now(UTC),
            expires_at=expires,
        ).asave(HubOpsToken.block_name(cluster, hub), overwrite=True)
        me = await asyncio.to_thread(api.whoami, url, token)
        if me.get("name") != OPS_USER:
            raise api.HubApiError(f"new ops token answers as {me.get('name')!r}, not {OPS_USER!r}")
        for old in await asyncio.to_thread(api.list_tokens, url, token, OPS_USER):
            if old != token_id:
                await asyncio.to_thread(api.revoke_token, url, token, OPS_USER, old)
                logger.info("revoked old ops token %s", old)
    finally:
        # The bootstrap admin revokes its own tokens (the calling one last): the ops user
        # has no rights over an admin.
        revoked = await asyncio.to_thread(api.revoke_user_tokens, url, bootstrap, BOOTSTRAP_USER)
    logger.info(
        "issued ops token %s for %s/%s (expires %s); revoked %d bootstrap token(s)",
        token_id, cluster, hub, f"{expires:%Y-%m-%d}", revoked,
    )  # fmt: skip
    return "created"


def local_minter(local: LocalHub) -> Callable[[], str]:
    """Mints the bootstrap token with `jupyterhub token` beside the local hub."""
    return lambda: _mint_bootstrap_token(local)


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


#: z2jh's hub container: its config file (the working directory holds the database).
Z2JH_CONFIG = "/usr/local/etc/jupyterhub/jupyterhub_config.py"


def kube_minter(api: Any, namespace: str) -> Callable[[], str]:
    """Mints the bootstrap token with `jupyterhub token` inside the running hub pod (z2jh's
    `component=hub`), through the Kubernetes API's exec: the token travels on that stream
    only, never into a file, a log or a command line."""
    return lambda: _mint_in_pod(api, namespace)


def _mint_in_pod(api: Any, namespace: str) -> str:
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(api)
    # The client's models type every field Optional; the API always sets these.
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector="component=hub").items
    names = [
        str(p.metadata.name)
        for p in pods
        if p.status.phase == "Running" and not p.metadata.deletion_timestamp
    ]
    if not names:
        raise HubfleetError(f"no running hub pod in namespace {namespace!r} to mint a token in")
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        names[0],
        namespace,
        container="hub",
        command=["jupyterhub", "token", "-f", Z2JH_CONFIG, BOOTSTRAP_USER],
        stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
    )  # fmt: skip
    out, err = [], []
    while resp.is_open():
        resp.update(timeout=5)
        out.append(resp.read_stdout())
        err.append(resp.read_stderr())
    resp.close()
    code = resp.returncode
    stdout, stderr = "".join(out).strip(), "".join(err).strip()
    token = stdout.splitlines()[-1] if stdout else ""
    if code != 0 or len(token) < 16:
        raise HubfleetError(
            f"could not mint a bootstrap token in {namespace}/{names[0]} "
            f"(exit {code}): {stderr[-500:]}"
        )
    return token


class HubOpsTokenRotator(Rotator):
    """Rotates a hub's ops token through the JupyterHub REST API.

    New: a `hubfleet-ops` token issued with the old one (JupyterHub gives it the user's
    own scopes, never more). Store: the `HubOpsToken` block. Revoke: delete the old token
    by id.

    url: where the hub answers during the rotation (a Kubernetes hub's port-forward, see
    `tasks.rotators.rotator_for`); store_url: where the block says the hub lives (default
    url; a Kubernetes hub keeps its domain, as `ensure_ops_service` stores it).
    """

    kind = CredentialKind.hub_ops_token
    #: Health probes that loaded the old token just before the switch finish with it first.
    settle_seconds = 1.0

    def __init__(self, cluster: str, hub: str, url: str, store_url: str | None = None):
        super().__init__(cluster, hub)
        self.url = url
        self.store_url = store_url or url
        self._stored: HubOpsToken | None = None
        self._expires: datetime | None = None

    async def current(self) -> Issued:
        assert self.hub is not None
        block = await load_ops_token(self.cluster, self.hub)
        if block is None:
            raise CredentialRefused(
                f"no ops token is stored for hub {self.owner}; deploy the hub first "
                f"(hubfleet deploy {self.cluster} {self.hub})"
            )
        self._stored = block
        return Issued(block.token_id, block.token, block.created_at)

    async def clean_stale(self, current: Issued) -> list[str]:
        """Revoke ops tokens left by an interrupted rotation (they are in no block)."""
        token = current.secret.get_secret_value()
        ids = await asyncio.to_thread(api.list_tokens, self.url, token, OPS_USER)
        stale = [i for i in ids if i != current.ident]
        for token_id in stale:
            await asyncio.to_thread(api.revoke_token, self.url, token, OPS_USER, token_id)
        return [f"revoked stale ops token {token_id}" for token_id in stale]

    async def create(self) -> Issued:
        assert self._stored is not None
        issuer = self._stored.token.get_secret_value()
        token_id, token, self._expires = await asyncio.to_thread(issue_ops_token, self.url, issuer)
        return Issued(token_id, SecretStr(token))

    async def delete(self, new: Issued) -> None:
        assert self._stored is not None
        issuer = self._stored.token.get_secret_value()
        await asyncio.to_thread(api.revoke_token, self.url, issuer, OPS_USER, new.ident)

    async def store(self, new: Issued, previous: Issued) -> None:
        assert self._stored is not None and self.hub is not None
        await HubOpsToken(
            hub=self.owner,
            url=self.store_url,
            token_id=new.ident,
            token=new.secret,
            created_at=new.created_at,
            expires_at=self._expires,
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
        if me.get("name") != OPS_USER:
            raise CredentialRefused(f"ops token {credential.ident} answers as {me.get('name')!r}")
        return OPS_USER

    async def switch(self, new: Issued) -> list[str]:
        # The block is the only consumer; give runs that read it just before the switch
        # time to finish their call with the old token.
        await asyncio.sleep(self.settle_seconds)
        return []

    async def revoke(self, old: Issued) -> None:
        new = await load_ops_token(self.cluster, self.hub or "")
        assert new is not None and new.token_id != old.ident
        await asyncio.to_thread(
            api.revoke_token, self.url, new.token.get_secret_value(), OPS_USER, old.ident
        )

    async def refused(self, old: Issued) -> bool:
        try:
            await asyncio.to_thread(api.whoami, self.url, old.secret.get_secret_value())
        except api.TokenRefused:
            return True
        return False
