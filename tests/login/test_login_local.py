"""Logging in to a local hub through the real OAuth flow, against a real OpenID Connect
provider: Dex (built from the Go module proxy) with static passwords, a real JupyterHub
with oauthenticator's GenericOAuthenticator, a browser's side played by requests.

An allowed user logs in and gets a server; a user outside the allowed set is refused
(403); an admin is admin (the hub's API says so); the client secret is in no log,
artifact, parameter or file.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter
from pydantic import SecretStr

from blocks.hub_token import HubOpsToken
from flows.deploy_hub import deploy_hub
from hubfleet.credentials import CredentialKind, Scope, plan_rotation
from hubfleet.loader import load_fleet
from tasks.credential_inventory import collect_inventory
from tasks.local_hub import local_hub
from tasks.oauth import OAuthClientMissing, store_oauth_client
from testenv.dex import ADMIN, ALLOWED, OUTSIDER, USERS, Dex, client_for, log_in
from testenv.emulators import _free_port

pytestmark = pytest.mark.usefixtures("prefect_server")


def write_fleet(root: Path, cluster: str, hub: str, issuer: str) -> None:
    (root / "clusters" / cluster).mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: login-local\nchart_version: 4.4.0\n")
    (root / "clusters" / cluster / "cluster.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: {cluster}
            provider: local
            local: {{}}
            hubs:
              - name: {hub}
                domain: {hub}.{cluster}.hubfleet.test
                tier: prod
                kind: standing
                auth:
                  provider: oidc
                  client_id: hubfleet-login-test
                  issuer: {issuer}
                  username_claim: name
                  allowed_users: [{ALLOWED.username}]
                  admin_users: [{ADMIN.username}]
            """
        )
    )


def user_model(url: str, token: str, name: str) -> dict:
    answer = requests.get(
        f"{url}/hub/api/users/{name}", headers={"Authorization": f"token {token}"}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()


def wait_server_ready(url: str, token: str, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        server = user_model(url, token, name).get("servers", {}).get("", {})
        if server.get("ready"):
            return server
        assert time.monotonic() < deadline, f"{name}'s server not ready: {server}"
        time.sleep(0.5)


async def test_oidc_login_on_local_hub(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, dex_binary: Path
) -> None:
    cluster, hub = f"auth{uuid.uuid4().hex[:5]}", "login"
    dex_port = _free_port()
    issuer = f"http://127.0.0.1:{dex_port}/dex"
    root = tmp_path / "fleet"
    write_fleet(root, cluster, hub, issuer)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))

    # `auth:` without a stored client secret: refused, saying how to store it.
    with pytest.raises(OAuthClientMissing, match=f"hubfleet oauth-client set {cluster} {hub}"):
        await deploy_hub(cluster=cluster, hub=hub)
    assert local_hub(load_fleet(root), cluster, hub).state() is None

    # The hub's port is chosen at its first deploy; Dex learns the callback after.
    client = client_for("http://placeholder/hub/oauth_callback")
    secret = client.secret
    assert await store_oauth_client(cluster, hub, client.client_id, SecretStr(secret)) == "created"
    started = time.monotonic()
    url = (await deploy_hub(cluster=cluster, hub=hub)).url
    deploy_s = time.monotonic() - started
    client = type(client)(client.client_id, secret, (f"{url}/hub/oauth_callback",))

    with Dex([client], USERS, port=dex_port, binary=dex_binary) as dex:
        token = (await HubOpsToken.aload(f"{cluster}-{hub}")).token.get_secret_value()

        # An allowed user: Dex's form, the callback, then the hub spawns her server.
        started = time.monotonic()
        alice = log_in(url, ALLOWED)
        assert any("/dex/auth/local" in u for u in alice.passed_through), alice.passed_through
        assert any("/hub/oauth_callback" in u for u in alice.passed_through)
        assert alice.answer.status_code == 200, alice.passed_through
        server = wait_server_ready(url, token, ALLOWED.username)
        login_s = time.monotonic() - started
        # Her browser session is logged in to the hub (no redirect to the login page).
        home = alice.session.get(f"{url}/hub/home", allow_redirects=False, timeout=30)
        assert home.status_code == 200, (home.status_code, home.headers.get("Location"))
        model = user_model(url, token, ALLOWED.username)
        assert model["admin"] is False and server["ready"] is True

        # A user Dex knows but the hub does not allow: refused by the hub with a 403 page.
        mallory = log_in(url, OUTSIDER)
        assert mallory.answer.status_code == 403, mallory.passed_through
        assert "/hub/oauth_callback" in mallory.answer.url
        gone = requests.get(
            f"{url}/hub/api/users/{OUTSIDER.username}",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        )
        assert gone.status_code == 404  # never became a user of the hub

        # An admin: admin_users makes the hub say admin: true.
        ada = log_in(url, ADMIN)
        assert ada.answer.status_code == 200, ada.passed_through
        assert user_model(url, token, ADMIN.username)["admin"] is True

        # A wrong password never gets past Dex.
        wrong = log_in(url, type(ALLOWED)("alice", ALLOWED.email, "not-her-password"))
        assert "/hub/oauth_callback" not in " ".join(wrong.passed_through)
        dex_log = dex.log_text()

    # The inventory lists the client, its age and that it is rotated by hand.
    fleet = load_fleet(root)
    records = [
        r for r in await collect_inventory.fn(fleet) if r.kind is CredentialKind.oauth_client_secret
    ]
    assert [r.owner for r in records] == [f"{cluster}/{hub}"]
    assert records[0].ident == "oidc client hubfleet-login-test"
    assert "rotate by hand" in records[0].note and "due " in records[0].note
    from datetime import UTC, datetime

    plan = plan_rotation(records, Scope("all"), datetime.now(UTC))
    assert plan.rotate == [] and "rotate by hand" in plan.skipped[0][1]

    # The secret: in no run log, artifact, parameter, hub file or Dex's config and log.
    texts = [dex_log]
    async with get_client() as pc:
        logs: list = []
        while page := await pc.read_logs(LogFilter(), limit=200, offset=len(logs)):
            logs += page
        texts += [log.message for log in logs]
        texts += [f"{a.data} {a.description}" for a in await pc.read_artifacts(limit=200)]
        texts += [f"{r.parameters}" for r in await pc.read_flow_runs(limit=200)]
        texts += [f"{t.task_inputs}" for t in await pc.read_task_runs(limit=200)]
    assert not [t[:80] for t in texts if secret in t]
    hub_dir = local_hub(fleet, cluster, hub).directory
    for path in [*hub_dir.rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    print(f"\nlogin figures: deploy {deploy_s:.1f}s, allowed login to server ready {login_s:.1f}s")
