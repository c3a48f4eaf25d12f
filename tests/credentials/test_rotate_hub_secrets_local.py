"""Rotating a local hub's cookie secret, only on request, against a real JupyterHub.

Real components only: JupyterHub + configurable-http-proxy processes (the hub logs users
in with JupyterHub's dummy authenticator, set through the hub's values), the Prefect
server, HTTP logins with real cookies.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import requests

from blocks.hub_token import HubOpsToken
from flows.check_hub_health import check_hub_health
from flows.deploy_hub import deploy_hub
from flows.rotate_credentials import rotate_credentials
from hubfleet.credentials import BadScope
from tasks import jupyterhub_api as api
from testenv import history

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def login_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A fleet with one local cluster and one hub users can log in to (any password)."""
    cluster, hub = f"lab{uuid.uuid4().hex[:5]}", "login"
    root = tmp_path / "fleet"
    (root / "clusters" / cluster).mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: cred-local\nchart_version: 4.4.0\n")
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
                values: [{hub}.values.yaml]
            """
        )
    )
    (root / "clusters" / cluster / f"{hub}.values.yaml").write_text(
        "jupyterhub:\n  hub:\n    config:\n      JupyterHub: {authenticator_class: dummy}\n"
    )
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    return cluster, hub


def log_in(url: str, user: str) -> requests.Session:
    """A browser-like login: the form's xsrf cookie, then POST /hub/login."""
    session = requests.Session()
    session.get(f"{url}/hub/login", timeout=10).raise_for_status()
    answer = session.post(
        f"{url}/hub/login",
        data={"username": user, "password": "any", "_xsrf": session.cookies.get("_xsrf", "")},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.status_code
    return session


def home(session: requests.Session, url: str) -> tuple[int, str]:
    """GET /hub/home with the session's cookies: 200 when logged in, else a redirect."""
    answer = session.get(f"{url}/hub/home", allow_redirects=False, timeout=10)
    return answer.status_code, answer.headers.get("Location", "")


async def plan_artifact() -> str:
    return "\n".join(str(a.data) for a in await history.artifacts(key="rotation-plan"))


async def test_cookie_rotation_logs_users_out_ops_token_and_health_survive(
    login_hub: tuple[str, str], data_dir: Path, secret_ledger: set[str]
) -> None:
    cluster, hub = login_hub
    url = (await deploy_hub(cluster=cluster, hub=hub)).url
    cookie_file = data_dir / "hubs" / cluster / hub / "jupyterhub_cookie_secret"
    old_secret = cookie_file.read_text().strip()
    secret_ledger.add(old_secret)
    ops = await HubOpsToken.aload(f"{cluster}-{hub}")
    alice = log_in(url, "alice")
    assert home(alice, url)[0] == 200

    # The weekly run (scope all, everything due) does not touch hub secrets, and says why.
    weekly = await rotate_credentials(scope="all", max_age=None)
    assert weekly.hub_secrets == [] and weekly.warning == ""
    assert "skip: rotate on request only" in await plan_artifact()
    assert cookie_file.read_text().strip() == old_secret
    assert home(alice, url)[0] == 200

    # A dry run says loudly what would happen and changes nothing.
    scope = f"hub-secret:{cluster}/{hub}"
    dry = await rotate_credentials(scope=scope, dry_run=True)
    assert dry.would_rotate == [f"hub-secret {cluster}/{hub}"]  # cookie + proxy: one
    assert "every user must log in again" in dry.warning
    assert cookie_file.read_text().strip() == old_secret
    assert home(alice, url)[0] == 200

    result = await rotate_credentials(scope=scope, operator="erin")
    [done] = result.rotated
    assert done.kind == "hub-secret" and done.owner == f"{cluster}/{hub}"
    assert "proxy auth token (new at every start)" in done.switched
    new_secret = cookie_file.read_text().strip()
    secret_ledger.add(new_secret)
    assert new_secret != old_secret and len(new_secret) == 64
    assert cookie_file.stat().st_mode & 0o777 == 0o600
    assert f"rotating hub secrets of {cluster}/{hub}" in await plan_artifact()

    # Alice's login cookie from before no longer authenticates: she is sent to log in.
    status, location = home(alice, url)
    assert status == 302 and "/hub/login" in location
    # A new login works; the ops token still works; the health probe passes.
    assert home(log_in(url, "alice"), url)[0] == 200
    assert api.whoami(url, ops.token.get_secret_value())["name"] == "hubfleet-ops"
    assert (await check_hub_health(cluster=cluster, hub=hub)).verdict == "healthy"


async def test_hub_secret_scope_errors_are_clear(login_hub: tuple[str, str]) -> None:
    cluster, _ = login_hub
    with pytest.raises(BadScope, match=rf"scope 'hub-secret:{cluster}/nope': cluster .* no hub"):
        await rotate_credentials(scope=f"hub-secret:{cluster}/nope")
    with pytest.raises(BadScope, match=r"a hub is named as hub-secret:<cluster>/<hub>"):
        await rotate_credentials(scope="hub-secret:nohub")
