"""hubfleet.auth: a hub's `auth:` as z2jh hub.config, its checks, and the prod rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.deploy_hub import LoginRequired, check_hub_values
from hubfleet.auth import HubAuth, hub_config, kube_values
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.values import auth_problems


def fleet(tmp_path: Path, provider: str, hub_extra: str = "", values: str = "{}\n") -> Path:
    root = tmp_path / "fleet"
    d = root / "clusters" / "c"
    d.mkdir(parents=True)
    (root / "fleet.yaml").write_text("name: f\n")
    section = "kubeconfig: {context: x}" if provider == "kubeconfig" else "local: {}"
    (d / "cluster.yaml").write_text(
        f"name: c\nprovider: {provider}\n{section}\nhubs:\n"
        "  - name: h\n    domain: h.example.org\n    tier: prod\n    kind: standing\n"
        "    values: [h.values.yaml]\n" + textwrap.indent(hub_extra, "    ")
    )
    (d / "h.values.yaml").write_text(values)
    return root


def test_each_provider_renders_its_authenticator() -> None:
    github = hub_config(
        HubAuth(
            provider="github",
            client_id="gh",
            allowed_organizations=["lab"],
            admin_users=["root-admin"],
        ),
        "hub.example.org",
    )
    assert github["JupyterHub"] == {"authenticator_class": "github"}
    assert github["GitHubOAuthenticator"]["allowed_organizations"] == ["lab"]
    assert github["GitHubOAuthenticator"]["oauth_callback_url"] == (
        "https://hub.example.org/hub/oauth_callback"
    )
    assert github["Authenticator"] == {"admin_users": ["root-admin"]}
    google = hub_config(
        HubAuth(provider="google", client_id="g", allowed_domains=["college.edu"]), "h.org"
    )
    assert google["GoogleOAuthenticator"]["hosted_domain"] == ["college.edu"]
    cilogon = hub_config(
        HubAuth(
            provider="cilogon",
            client_id="c",
            idp="https://idp.example.org",
            allowed_domains=["example.org"],
        ),
        "h.org",
    )
    assert cilogon["CILogonOAuthenticator"]["allowed_idps"] == {
        "https://idp.example.org": {
            "username_derivation": {"username_claim": "email"},
            "allowed_domains": ["example.org"],
        }
    }
    oidc = hub_config(
        HubAuth(
            provider="oidc",
            client_id="o",
            issuer="https://sso.example.org/dex/",
            allowed_groups=["staff"],
            admin_groups=["ops"],
        ),
        None,
    )
    generic = oidc["GenericOAuthenticator"]
    assert generic["token_url"] == "https://sso.example.org/dex/token"
    assert generic["allowed_groups"] == ["staff"] and generic["admin_groups"] == ["ops"]
    assert "oauth_callback_url" not in generic  # local hubs: taken from the request
    assert generic["auth_state_groups_key"] == "oauth_user.groups" and generic["manage_groups"]


def test_kube_values_carry_no_secret_only_a_reference() -> None:
    values = kube_values(HubAuth(provider="github", client_id="gh", allowed_users=["a"]), "h.org")
    env = values["hub"]["extraEnv"]["OAUTH_CLIENT_SECRET"]
    assert env == {
        "valueFrom": {"secretKeyRef": {"name": "hubfleet-oauth", "key": "client-secret"}}
    }


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("auth: {provider: github, client_id: x}", "nobody would be allowed to log in"),
        (
            "auth: {provider: google, client_id: x, allowed_groups: [a]}",
            "allowed_groups is only understood by provider oidc, not 'google'",
        ),
        ("auth: {provider: oidc, client_id: x, allowed_users: [a]}", "needs issuer"),
        ("auth: {provider: cilogon, client_id: x, allowed_users: [a]}", "needs idp"),
        ("auth: {provider: gitlab, client_id: x, allowed_users: [a]}", "allowed: github"),
    ],
)
def test_bad_auth_names_file_line_and_fix(tmp_path: Path, auth: str, message: str) -> None:
    root = fleet(tmp_path, "local", auth + "\n")
    with pytest.raises(FleetInvalid) as err:
        load_fleet(root)
    [problem] = err.value.problems
    assert problem.line == 10 and problem.field.startswith("hubs[0].auth")
    assert message in problem.message


def test_prod_kube_hub_without_login_is_refused(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path / "a", "kubeconfig"))
    [problem] = auth_problems(loaded)
    assert problem.field == "hubs[0].auth" and problem.line == 5
    assert "would let anyone log in" in problem.message
    assert (
        "add an `auth:` section" in problem.message
        and "hubfleet oauth-client set" in problem.message
    )
    with pytest.raises(LoginRequired, match="Nothing was deployed"):
        check_hub_values(loaded, "c", "h")
    # z2jh's dummy authenticator, set in values, is refused too; a real one is not.
    dummy = "jupyterhub: {hub: {config: {JupyterHub: {authenticator_class: dummy}}}}\n"
    assert auth_problems(load_fleet(fleet(tmp_path / "b", "kubeconfig", values=dummy)))
    github = dummy.replace("dummy", "github")
    assert auth_problems(load_fleet(fleet(tmp_path / "c", "kubeconfig", values=github))) == []
    with_auth = "auth: {provider: github, client_id: x, allowed_users: [a]}\n"
    assert auth_problems(load_fleet(fleet(tmp_path / "d", "kubeconfig", with_auth))) == []


def test_local_prod_hub_needs_no_login(tmp_path: Path) -> None:
    """Local hubs listen on loopback and let nobody log in (null): no open door."""
    assert auth_problems(load_fleet(fleet(tmp_path, "local"))) == []


def test_example_fleet_prod_hubs_all_have_a_login() -> None:
    assert auth_problems(load_fleet("fleet")) == []


def test_dex_pins_one_commit_for_its_module_and_api() -> None:
    """The wrapper module redoes dex's `replace .../api/v2 => ./api/v2`: both pseudo-versions
    must name the same commit (the release tag's), or the build mixes two trees."""
    from testenv.build import load_versions

    dex = load_versions()["dex"]

    def stamp_and_commit(version: str) -> tuple[str, str]:
        stamp, commit = version.rsplit("-", 2)[1:]
        return stamp.rsplit(".", 1)[-1], commit  # v2.1.1-0.<stamp>-<commit>: after the "0."

    assert stamp_and_commit(dex["module_version"]) == stamp_and_commit(dex["api_version"])
