"""A hub's own secrets: the proxy auth token and the cookie secret. Rotated only on request.

Rotating them is a redeploy, and every user logs in again (their login cookies are signed
with the cookie secret). So the weekly run never rotates them (`CredentialKind.hub_secret`
is not `scheduled`); only a scope that names them does (see `hubfleet.credentials.Scope`).

Kubernetes hubs (`KubeHubSecretRotator`): the values live in Zero to JupyterHub's Secret
`hub` (keys `hub.config.ConfigurableHTTPProxy.auth_token`, `hub.config.JupyterHub.cookie_secret`;
z2jh generates them at install and its `lookup` keeps what is deployed on a later
`helm upgrade`). create = new random values, in memory;
store = write them into the Secret (annotated `hubfleet.io/rotated-at`) and roll the proxy,
then (once it is Ready) the hub Deployment to them (`roll_order`; pod-template annotation
`hubfleet.io/hub-secret-version`, a short hash of the values, as `kubectl rollout restart`
does); if that fails half-way, store puts the old Secret back and rolls back to it before
the error goes up (the transaction's rollback only undoes a store that completed);
verify = the Secret holds the
values and every live hub/proxy pod runs that version and is Ready. What "old refused"
means here: the old values are in no Secret and no live pod runs the old version (so the
proxy refuses the old token, and the hub signs and accepts cookies only with the new
secret). There is nothing else to revoke. The previous Secret data is kept only in this
process's memory, for the rollback.

Local hubs (`LocalHubSecretRotator`): the cookie secret is a file in the hub's directory;
store = write the new one (0600) and restart the hub through `LocalHub.start` (its proxy
gets a new auth token at every start, so the restart rotates that too).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import requests
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr
from urllib3.exceptions import HTTPError

from hubfleet.credentials import CredentialKind, CredentialRecord, policy_max_age
from hubfleet.errors import HubfleetError
from hubfleet.model import CredentialPolicy, Fleet
from tasks.retry import TransientError
from tasks.rotation import CredentialRefused, Issued, Rotator

#: Secret keys hubfleet rotates (z2jh's hub.config.CryptKeeper.keys is not rotated: new
#: keys would make every stored auth state unreadable).
PROXY_TOKEN = "hub.config.ConfigurableHTTPProxy.auth_token"
COOKIE_SECRET = "hub.config.JupyterHub.cookie_secret"
#: z2jh values that pin them (a rotation would be undone by the next deploy).
PINNING_VALUES = (
    ("hub", "cookieSecret"),
    ("proxy", "secretToken"),
    ("hub", "config", "JupyterHub", "cookie_secret"),
    ("hub", "config", "ConfigurableHTTPProxy", "auth_token"),
)
ROTATED_AT = "hubfleet.io/rotated-at"
VERSION = "hubfleet.io/hub-secret-version"
#: How long the hub and proxy may take to roll to new values and be Ready.
ROLLOUT_SECONDS = 180.0
#: Read timeout of inventory calls: one unreachable cluster must not stall the inventory.
INVENTORY_TIMEOUT = (3, 10)


class HubSecretPinned(HubfleetError):
    """The hub's values set a hub secret explicitly, so a rotation would be undone."""


def secret_name(release: str) -> str:
    """z2jh's hub Secret (one hub per namespace: z2jh names its objects without a prefix)."""
    return "hub"


def deployments(release: str) -> list[str]:
    """The Deployments that read the Secret: the hub and the proxy."""
    return ["hub", "proxy"]


def roll_order(release: str) -> list[str]:
    """The order the Deployments are rolled to new values: the proxy, then the hub.

    At startup the hub talks to the proxy's API with the auth token and re-adds every route
    (users' servers included). A hub started on the new token while the old proxy still
    runs gets 403 from it and exits, crash-looping until the proxy catches up; a proxy
    restarted after the hub starts with an empty route table until the hub's next check.
    Proxy first (and Ready), then the hub: the new hub finds the new proxy and fills it.
    """
    return ["proxy", "hub"]


def version_of(values: dict[str, str]) -> str:
    """A short, non-secret name for one set of values (a hash: reveals nothing usable)."""
    text = json.dumps({k: values.get(k, "") for k in (PROXY_TOKEN, COOKIE_SECRET)})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _decode(data: dict[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def _encode(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def _api_for(kubeconfig: str, context: str) -> client.ApiClient:
    return config.new_client_from_config_dict(yaml.safe_load(kubeconfig), context=context)


def pinned_keys(api: client.ApiClient, namespace: str, release: str) -> list[str]:
    """The chart values of the deployed release that pin a hub secret (key names only)."""
    found = client.CoreV1Api(api).list_namespaced_secret(
        namespace,
        label_selector=f"owner=helm,name={release},status=deployed",
        _request_timeout=INVENTORY_TIMEOUT,
    )
    if not found.items:
        return []
    items: list[Any] = found.items
    latest = max(items, key=lambda s: int((s.metadata.labels or {}).get("version", 0)))
    raw = base64.b64decode(base64.b64decode(latest.data["release"]))
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    values = (json.loads(raw).get("config") or {}).get("jupyterhub") or {}
    keys = []
    for path in PINNING_VALUES:
        node: Any = values
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node:
            keys.append("jupyterhub." + ".".join(path))
    return keys


def _pinned_message(cluster: str, hub: str, keys: list[str]) -> str:
    return (
        f"hub secrets of {cluster}/{hub} are not rotated: its values set {', '.join(keys)} "
        "explicitly, and the next deploy would put the pinned value back. Fix: remove "
        f"{' and '.join(keys)} from the hub's values files and from its Secret block "
        f"'hub-values-{cluster}-{hub}', redeploy the hub (the deployed value is kept), then "
        "rotate. Nothing was changed."
    )


# --- the inventory --------------------------------------------------------------------------


def _records_for_hub(
    api: client.ApiClient, cluster: str, hub: str, max_age: Any
) -> list[CredentialRecord]:
    name = secret_name(hub)
    try:
        secret: Any = client.CoreV1Api(api).read_namespaced_secret(
            name, hub, _request_timeout=INVENTORY_TIMEOUT
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        note = f"not deployed (no Secret {hub}/{name})"
        return [
            CredentialRecord(
                cluster, hub, CredentialKind.hub_secret, "-", None, None, max_age, (), note=note
            )
        ]
    meta = secret.metadata
    rotated = (meta.annotations or {}).get(ROTATED_AT)
    last = datetime.fromisoformat(rotated) if rotated else None
    created = meta.creation_timestamp
    where = f"secret:{hub}/{name}"
    hub_dep, proxy_dep = (f"deployment:{hub}/{d}" for d in deployments(hub))
    pins = pinned_keys(api, hub, hub)
    pin_note = f"; pinned by values ({', '.join(pins)}): rotation refused" if pins else ""
    keys = set((secret.data or {}).keys())
    records = [
        CredentialRecord(
            cluster,
            hub,
            CredentialKind.hub_secret,
            f"{name}:{PROXY_TOKEN}",
            created,
            last,
            max_age,
            (where, hub_dep, proxy_dep),
            note=f"proxy auth token{pin_note}",
        )
    ]
    if COOKIE_SECRET in keys:
        cookie = CredentialRecord(
            cluster,
            hub,
            CredentialKind.hub_secret,
            f"{name}:{COOKIE_SECRET}",
            created,
            last,
            max_age,
            (where, hub_dep),
            note=f"cookie secret; rotating logs every user out{pin_note}",
        )
    else:
        cookie = CredentialRecord(
            cluster,
            hub,
            CredentialKind.hub_secret,
            "cookie-secret (hub volume file)",
            created,
            last,
            max_age,
            (hub_dep,),
            note="cookie secret made by the hub at first start; a rotation moves it into "
            f"the Secret{pin_note}",
        )
    return [*records, cookie]


async def kube_hub_secret_records(fleet: Fleet, cluster: str) -> list[CredentialRecord]:
    """Read-only: identity and age of each hub's secrets on a Kubernetes cluster (never the
    values). A cluster that cannot be read gives one 'unknown' record per hub, with why."""
    from blocks.cluster_access import ClusterAccess

    spec = fleet.cluster(cluster)
    policy: CredentialPolicy = fleet.settings.credentials
    max_age = policy_max_age(policy, CredentialKind.hub_secret)
    hubs = [h.name for h in spec.hubs]

    def read(kubeconfig: str, context: str) -> list[CredentialRecord]:
        with _api_for(kubeconfig, context) as api:
            return [r for hub in hubs for r in _records_for_hub(api, cluster, hub, max_age)]

    try:
        access = await ClusterAccess.for_cluster(cluster)
        return await asyncio.to_thread(read, access.kubeconfig.get_secret_value(), access.context)
    except Exception as exc:
        if isinstance(exc, ApiException):
            why = f"HTTP {exc.status} {exc.reason}"
        elif isinstance(exc, HubfleetError):
            why = str(exc).split(":")[0]
        else:
            why = type(exc).__name__
        note = f"not read: cluster {cluster!r} not reachable ({why})"
        return [
            CredentialRecord(
                cluster, hub, CredentialKind.hub_secret, "-", None, None, max_age, (), note=note
            )
            for hub in hubs
        ]


# --- Kubernetes hubs ------------------------------------------------------------------------


class KubeHubSecretRotator(Rotator):
    """Rotates the proxy auth token and cookie secret of one hub on a Kubernetes cluster."""

    kind = CredentialKind.hub_secret
    revoke_grace_seconds = ROLLOUT_SECONDS
    store_name = "hub's Kubernetes Secret"

    def __init__(self, cluster: str, hub: str, kubeconfig: SecretStr, context: str):
        super().__init__(cluster, hub)
        self.release = self.namespace = hub
        self.name = secret_name(hub)
        self._kubeconfig = kubeconfig
        self._context = context
        #: The Secret as it was before the rotation (all keys, annotations): in memory only.
        self._previous: tuple[dict[str, str], dict[str, str]] | None = None
        #: Whether `store` got as far as writing the Secret (then a failure must undo it).
        self._secret_written = False

    @classmethod
    async def for_hub(cls, cluster: str, hub: str) -> KubeHubSecretRotator:
        from blocks.cluster_access import ClusterAccess

        access = await ClusterAccess.for_cluster(cluster)
        return cls(cluster, hub, access.kubeconfig, access.context)

    async def _call(self, fn: Any) -> Any:
        """Run `fn(api_client)` in a thread; 429/5xx and connection trouble are transient."""

        def run() -> Any:
            with _api_for(self._kubeconfig.get_secret_value(), self._context) as api:
                return fn(api)

        try:
            return await asyncio.to_thread(run)
        except ApiException as exc:
            if exc.status in (429, 500, 502, 503, 504):
                raise TransientError(f"Kubernetes API: HTTP {exc.status} {exc.reason}") from None
            raise HubfleetError(
                f"Kubernetes API refused a call on hub {self.owner} (HTTP {exc.status} "
                f"{exc.reason})"
            ) from None
        except HTTPError as exc:
            raise TransientError(f"Kubernetes API unreachable: {type(exc).__name__}") from None

    def _issued(self, values: dict[str, str]) -> Issued:
        mine = {k: values[k] for k in (PROXY_TOKEN, COOKIE_SECRET) if k in values}
        return Issued(f"hub-secret@{version_of(mine)}", SecretStr(json.dumps(mine)))

    @staticmethod
    def _values(credential: Issued) -> dict[str, str]:
        values: dict[str, str] = json.loads(credential.secret.get_secret_value())
        return values

    # --- the protocol ------------------------------------------------------------------

    async def current(self) -> Issued:
        def read(api: client.ApiClient) -> tuple[dict[str, str], dict[str, str], list[str]]:
            try:
                secret: Any = client.CoreV1Api(api).read_namespaced_secret(
                    self.name, self.namespace
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise CredentialRefused(
                        f"hub {self.owner} has no Secret {self.namespace}/{self.name}: deploy "
                        "the hub first. Nothing was changed."
                    ) from None
                raise
            pins = pinned_keys(api, self.namespace, self.release)
            return secret.data or {}, dict(secret.metadata.annotations or {}), pins

        data, annotations, pins = await self._call(read)
        if pins:
            raise HubSecretPinned(_pinned_message(self.cluster, self.hub or "", pins))
        self._previous = (data, annotations)
        return self._issued(_decode(data))

    async def create(self) -> Issued:
        # Hex, as the chart's values schema wants for hub.cookieSecret (32 bytes).
        return self._issued(
            {PROXY_TOKEN: secrets.token_hex(32), COOKIE_SECRET: secrets.token_hex(32)}
        )

    async def delete(self, new: Issued) -> None:
        """The new values existed only in memory and in the Secret (restored by `restore`)."""
        return None

    def _write(
        self, api: client.ApiClient, data: dict[str, str], annotations: dict[str, str]
    ) -> None:
        """Replace the Secret's data and annotations, then roll the proxy and, once it runs
        the new values and is Ready, the hub (`roll_order` says why in that order). The hub's
        own readiness is what `verify` waits for."""
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        secret: Any = core.read_namespaced_secret(self.name, self.namespace)
        secret.data = data
        secret.metadata.annotations = annotations
        core.replace_namespaced_secret(self.name, self.namespace, secret)
        self._secret_written = True
        version = version_of(_decode(data))
        patch = {"spec": {"template": {"metadata": {"annotations": {VERSION: version}}}}}
        *first, last = roll_order(self.release)
        for name in first:
            apps.patch_namespaced_deployment(name, self.namespace, patch)
            self._wait_rolled(api, name, version)
        apps.patch_namespaced_deployment(last, self.namespace, patch)

    def _wait_rolled(self, api: client.ApiClient, name: str, version: str) -> None:
        """Wait until Deployment `name` and its pods run `version` and are Ready."""
        deadline = time.monotonic() + ROLLOUT_SECONDS
        while problems := self._rollout_problems(api, name, version):
            if time.monotonic() > deadline:
                raise HubfleetError(
                    f"hub {self.owner}: {name} did not roll to secret version {version} "
                    f"within {ROLLOUT_SECONDS:g}s: {'; '.join(problems)}"
                )
            time.sleep(1.0)

    async def store(self, new: Issued, previous: Issued) -> None:
        assert self._previous is not None, "current() reads the Secret first"
        data, annotations = self._previous
        values = self._values(new)
        changed = {**data, **_encode(values)}
        notes = {**annotations, ROTATED_AT: datetime.now(UTC).isoformat(timespec="seconds")}
        self._secret_written = False
        try:
            await self._call(lambda api: self._write(api, changed, notes))
        except Exception as exc:
            if not self._secret_written:
                raise
            # Half-way: the Secret holds the new values, some pods may run them. The
            # transaction's rollback undoes only a store that completed: undo this one here.
            try:
                await self._call(lambda api: self._write(api, data, annotations))
            except Exception as undo:
                raise HubfleetError(
                    f"{exc}; putting the previous Secret back failed too "
                    f"({type(undo).__name__}: {undo}): restore {self.namespace}/{self.name} "
                    "by hand"
                ) from None
            raise HubfleetError(
                f"{exc}; the Secret {self.namespace}/{self.name} was put back to "
                f"{previous.ident} and the proxy and hub rolled back to it"
            ) from None

    async def restore(self, previous: Issued) -> None:
        assert self._previous is not None
        data, annotations = self._previous
        await self._call(lambda api: self._write(api, data, annotations))

    def _rollout_problems(self, api: client.ApiClient, name: str, version: str) -> list[str]:
        """Why Deployment `name` (z2jh's component of that name) and its live pods do not
        all run `version` and are not all Ready ([] if they do)."""
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        problems = []
        dep: Any = apps.read_namespaced_deployment(name, self.namespace)
        want, st = dep.spec.replicas or 0, dep.status
        template = (dep.spec.template.metadata.annotations or {}).get(VERSION)
        if template != version:
            problems.append(f"deployment {name}: template on version {template or 'none'}")
        elif (st.observed_generation or 0) < dep.metadata.generation:
            problems.append(f"deployment {name}: rollout not observed yet")
        elif (st.updated_replicas or 0) < want or (st.ready_replicas or 0) < want:
            problems.append(f"deployment {name}: {st.ready_replicas or 0}/{want} ready")
        pods = core.list_namespaced_pod(
            self.namespace, label_selector=f"release={self.release},component={name}"
        )
        pod: Any
        for pod in pods.items:
            runs = (pod.metadata.annotations or {}).get(VERSION)
            if runs != version:
                problems.append(f"pod {pod.metadata.name}: runs version {runs or 'none'}")
            elif not any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            ):
                problems.append(f"pod {pod.metadata.name}: not Ready")
        return problems

    def _state(self, api: client.ApiClient) -> tuple[str, list[str]]:
        """The Secret's version, and why the hub/proxy pods do not all run it ([] if they do)."""
        secret: Any = client.CoreV1Api(api).read_namespaced_secret(self.name, self.namespace)
        version = version_of(_decode(secret.data))
        problems = []
        for name in deployments(self.release):
            problems += self._rollout_problems(api, name, version)
        return version, problems

    async def verify(self, credential: Issued) -> str:
        want = credential.ident.removeprefix("hub-secret@")
        deadline = time.monotonic() + ROLLOUT_SECONDS
        while True:
            version, problems = await self._call(self._state)
            if version != want:
                raise CredentialRefused(
                    f"Secret {self.namespace}/{self.name} holds version {version}, not {want}"
                )
            if not problems:
                names = ", ".join(deployments(self.release))
                return f"Secret {self.namespace}/{self.name}; {names} Ready on version {want}"
            if time.monotonic() > deadline:
                raise CredentialRefused(
                    f"hub {self.owner} did not roll to secret version {want} within "
                    f"{ROLLOUT_SECONDS:g}s: {'; '.join(problems)}"
                )
            await asyncio.sleep(1.0)

    async def switch(self, new: Issued) -> list[str]:
        """Nothing more to switch: `store` rolled the Deployments, `verify` saw them Ready."""
        return [f"deployment:{self.namespace}/{d}" for d in deployments(self.release)]

    async def revoke(self, old: Issued) -> None:
        """Nothing to delete: the old values left the Secret at `store`, and the rollout
        replaced every pod that had them (`refused` checks both)."""
        return None

    async def refused(self, old: Issued) -> bool:
        gone = old.ident.removeprefix("hub-secret@")
        old_values = self._values(old)

        def check(api: client.ApiClient) -> bool:
            secret: Any = client.CoreV1Api(api).read_namespaced_secret(self.name, self.namespace)
            now = _decode(secret.data)
            if any(now.get(k) == v for k, v in old_values.items()):
                return False
            version, problems = self._state(api)
            return version != gone and not problems

        return bool(await self._call(check))


# --- local hubs ---------------------------------------------------------------------------


class LocalHubSecretRotator(Rotator):
    """Rotates a local hub's cookie secret (a file) by writing a new one and restarting the
    hub; the restart also gives its proxy a new auth token (new at every start)."""

    kind = CredentialKind.hub_secret
    revoke_grace_seconds = 5.0
    store_name = "hub's cookie secret file"

    def __init__(self, fleet: Fleet, cluster: str, hub: str):
        from tasks.local_hub import local_hub

        super().__init__(cluster, hub)
        self.local = local_hub(fleet, cluster, hub)
        self.file = self.local.directory / "jupyterhub_cookie_secret"
        self._stored_at: datetime | None = None
        self._spec = fleet.cluster(cluster).hub(hub)

    def _issued(self, value: str) -> Issued:
        ident = f"cookie-secret@{hashlib.sha256(value.encode()).hexdigest()[:12]}"
        return Issued(ident, SecretStr(value))

    async def current(self) -> Issued:
        if self.local.state() is None or not self.file.is_file():
            raise CredentialRefused(
                f"hub {self.owner} was never deployed (no cookie secret file); deploy it first. "
                "Nothing was changed."
            )
        return self._issued(self.file.read_text().strip())

    async def create(self) -> Issued:
        return self._issued(secrets.token_hex(32))

    async def delete(self, new: Issued) -> None:
        """The new value existed only in memory and in the file (restored by `restore`)."""
        return None

    async def _login_env(self) -> dict[str, SecretStr]:
        """The hub's login client secret (its `auth:`), which a restart must keep."""
        from tasks.oauth import load_oauth_client, local_env

        return local_env(await load_oauth_client(self.cluster, self._spec))

    def _write_and_restart(self, value: str, env: dict[str, SecretStr] | None = None) -> None:
        state = self.local.state()
        assert state is not None
        tmp = self.file.with_name(f".{self.file.name}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
        os.replace(tmp, self.file)  # atomic: the file holds one secret at any time
        self.local.start(self.local.config_file.read_text(), state.ports, env)

    async def store(self, new: Issued, previous: Issued) -> None:
        self._stored_at = datetime.now(UTC).replace(microsecond=0)
        env = await self._login_env()
        await asyncio.to_thread(self._write_and_restart, new.secret.get_secret_value(), env)

    async def restore(self, previous: Issued) -> None:
        env = await self._login_env()
        await asyncio.to_thread(self._write_and_restart, previous.secret.get_secret_value(), env)

    def _started_with_file(self) -> datetime | None:
        """When the running hub started, if it started after the file was written."""
        state = self.local.state()
        if not (state and self.local.is_running() and state.started_at):
            return None
        started = datetime.fromisoformat(state.started_at)
        written = datetime.fromtimestamp(int(self.file.stat().st_mtime), UTC)
        return started if started >= written else None

    async def verify(self, credential: Issued) -> str:
        if self.file.read_text().strip() != credential.secret.get_secret_value():
            raise CredentialRefused(f"the cookie secret file does not hold {credential.ident}")
        started = self._started_with_file()
        state = self.local.state()
        if started is None or state is None:
            raise CredentialRefused(f"hub {self.owner} is not running on {credential.ident}")
        try:
            health = requests.get(f"{state.url}/hub/health", timeout=5).status_code
        except requests.RequestException as exc:
            raise TransientError(f"hub {self.owner}: {type(exc).__name__}") from None
        if health != 200:
            raise CredentialRefused(f"hub {self.owner}: /hub/health answered {health}")
        return f"hub {self.owner} restarted {started:%H:%M:%S} with {credential.ident}"

    async def switch(self, new: Issued) -> list[str]:
        """The restart in `store` switched the hub; its proxy got a new auth token too."""
        return [f"hub:{self.owner} (restarted)", "proxy auth token (new at every start)"]

    async def revoke(self, old: Issued) -> None:
        """Nothing to delete: the file was replaced and the hub restarted without it."""
        return None

    async def refused(self, old: Issued) -> bool:
        if self.file.read_text().strip() == old.secret.get_secret_value():
            return False
        started = self._started_with_file()
        return started is not None and (self._stored_at is None or started >= self._stored_at)
