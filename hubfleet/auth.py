"""Login: a hub's `auth:` (GitHub, Google, CILogon or generic OpenID Connect through
oauthenticator), rendered as z2jh `hub.config`, and the rule that a prod hub has one.

Pure: no Prefect, no network. The client secret is never here: it lives in the hub's
`OAuthClient` block (blocks/oauth_client.py) and reaches the hub only through its
environment (`OAUTH_CLIENT_SECRET`, which oauthenticator reads by default): on Kubernetes
from a Secret hubfleet writes through the API (`hub.extraEnv` refers to it), on a local
hub from the process environment. So it is never in a values file, helm's release or a
command line.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: The environment variable oauthenticator reads the client secret from.
SECRET_ENV = "OAUTH_CLIENT_SECRET"
#: The Kubernetes Secret (in the hub's namespace) holding the client secret, and its key.
KUBE_SECRET = "hubfleet-oauth"
KUBE_SECRET_KEY = "client-secret"
#: Pod annotation that changes when the stored client secret does (never the secret).
VERSION_ANNOTATION = "hubfleet.io/oauth-client-version"
#: Authenticators that let anyone in: a prod hub may not run them.
OPEN_AUTHENTICATORS = frozenset({"dummy", "jupyterhub.auth.DummyAuthenticator"})

Url = Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]


class AuthProvider(StrEnum):
    github = "github"
    google = "google"
    cilogon = "cilogon"
    oidc = "oidc"


#: oauthenticator's entry point name and traitlets class of each provider.
AUTHENTICATOR = {
    AuthProvider.github: ("github", "GitHubOAuthenticator"),
    AuthProvider.google: ("google", "GoogleOAuthenticator"),
    AuthProvider.cilogon: ("cilogon", "CILogonOAuthenticator"),
    AuthProvider.oidc: ("generic-oauth", "GenericOAuthenticator"),
}

#: Which allow-lists each provider understands (what the provider can tell us about a user).
_ALLOWED_BY = {
    "allowed_organizations": {AuthProvider.github},
    "allowed_domains": {AuthProvider.google, AuthProvider.cilogon},
    "allowed_groups": {AuthProvider.oidc},
    "admin_groups": {AuthProvider.oidc},
}


class HubAuth(BaseModel):
    """A hub's `auth:` section: who may log in, who is admin, and which OAuth client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: AuthProvider = Field(description="github | google | cilogon | oidc.")
    client_id: str = Field(min_length=1, description="The OAuth client's id (not secret).")
    allowed_users: list[str] = Field(default_factory=list, description="Usernames let in.")
    allowed_organizations: list[str] = Field(
        default_factory=list, description="github: members of these organizations (or org:team)."
    )
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="google: accounts of these Workspace domains; cilogon: e-mail domains.",
    )
    allowed_groups: list[str] = Field(
        default_factory=list, description="oidc: members of these groups (groups claim)."
    )
    admin_users: list[str] = Field(default_factory=list, description="Usernames made admin.")
    admin_groups: list[str] = Field(
        default_factory=list, description="oidc: members of these groups are admin."
    )
    issuer: Url | None = Field(
        None,
        description="oidc: the provider's issuer URL; authorize/token/userinfo default to "
        "<issuer>/auth, /token, /userinfo (Dex's layout) unless given below.",
    )
    authorize_url: Url | None = Field(None, description="oidc: where browsers are sent.")
    token_url: Url | None = Field(None, description="oidc: where the hub redeems the code.")
    userdata_url: Url | None = Field(None, description="oidc: where the hub reads the user.")
    username_claim: str = Field(
        "preferred_username", description="oidc: the claim that becomes the username."
    )
    groups_claim: str = Field("groups", description="oidc: the claim listing the user's groups.")
    scope: list[str] | None = Field(
        None, description="Scopes asked for; default per provider (oidc: openid profile email)."
    )
    idp: str | None = Field(
        None,
        description="cilogon: the identity provider's entity id users log in with "
        "(e.g. https://accounts.google.com/o/oauth2/auth); required for cilogon.",
    )
    callback_url: Url | None = Field(
        None, description="Default https://<domain>/hub/oauth_callback."
    )

    @model_validator(mode="after")
    def _fits_provider(self) -> HubAuth:
        for key, providers in _ALLOWED_BY.items():
            if getattr(self, key) and self.provider not in providers:
                names = " or ".join(sorted(p.value for p in providers))
                raise ValueError(
                    f"{key} is only understood by provider {names}, not "
                    f"{self.provider.value!r}; remove it or use allowed_users"
                )
        if self.provider is AuthProvider.oidc and not (
            self.issuer or (self.authorize_url and self.token_url and self.userdata_url)
        ):
            raise ValueError(
                "provider 'oidc' needs issuer (e.g. issuer: https://login.example.org/dex), "
                "or authorize_url, token_url and userdata_url"
            )
        if self.provider is AuthProvider.cilogon and not self.idp:
            raise ValueError(
                "provider 'cilogon' needs idp: the entity id of the identity provider users "
                "log in with (see https://cilogon.org/idplist/)"
            )
        if not (
            self.allowed_users
            or self.allowed_organizations
            or self.allowed_domains
            or self.allowed_groups
        ):
            raise ValueError(
                "nobody would be allowed to log in; add allowed_users (or "
                "allowed_organizations / allowed_domains / allowed_groups for the provider)"
            )
        return self


def oauth_block(cluster: str, hub: str) -> str:
    """Name of the hub's `OAuthClient` block (the client secret)."""
    return f"oauth-{cluster}-{hub}"


def hub_config(auth: HubAuth, domain: str | None) -> dict[str, Any]:
    """The z2jh `hub.config` (traitlets) that makes the hub log users in through `auth`.
    Holds no secret: the client secret comes from the environment (`SECRET_ENV`).

    `domain`: where users reach the hub (the callback is https://<domain>/hub/oauth_callback
    unless `callback_url` says otherwise); None (local hubs, on a loopback port): the
    callback is taken from the request, as oauthenticator does when it is unset.
    Allowed and admin users go on `Authenticator`, where hubfleet adds its own (a provider
    class's setting would hide the base class's)."""
    entry, cls = AUTHENTICATOR[auth.provider]
    traits: dict[str, Any] = {"client_id": auth.client_id}
    callback = auth.callback_url or (f"https://{domain}/hub/oauth_callback" if domain else None)
    if callback:
        traits["oauth_callback_url"] = callback
    base: dict[str, Any] = {}
    if auth.allowed_users:
        base["allowed_users"] = sorted(auth.allowed_users)
    if auth.admin_users:
        base["admin_users"] = sorted(auth.admin_users)
    if auth.scope is not None:
        traits["scope"] = list(auth.scope)
    if auth.provider is AuthProvider.github and auth.allowed_organizations:
        traits["allowed_organizations"] = sorted(auth.allowed_organizations)
        traits.setdefault("scope", ["read:org"])
    if auth.provider is AuthProvider.google and auth.allowed_domains:
        traits["hosted_domain"] = sorted(auth.allowed_domains)
    if auth.provider is AuthProvider.cilogon:
        assert auth.idp is not None
        rule: dict[str, Any] = {"username_derivation": {"username_claim": "email"}}
        if auth.allowed_domains:
            rule["allowed_domains"] = sorted(auth.allowed_domains)
        else:
            rule["allow_all"] = True  # the hub's allowed_users still decide
        traits["allowed_idps"] = {auth.idp: rule}
    if auth.provider is AuthProvider.oidc:
        issuer = (auth.issuer or "").rstrip("/")
        traits["authorize_url"] = auth.authorize_url or f"{issuer}/auth"
        traits["token_url"] = auth.token_url or f"{issuer}/token"
        traits["userdata_url"] = auth.userdata_url or f"{issuer}/userinfo"
        traits["username_claim"] = auth.username_claim
        traits.setdefault("scope", ["openid", "profile", "email"])
        if auth.allowed_groups or auth.admin_groups:
            traits["manage_groups"] = True
            traits["auth_state_groups_key"] = f"oauth_user.{auth.groups_claim}"
            if auth.allowed_groups:
                traits["allowed_groups"] = sorted(auth.allowed_groups)
            if auth.admin_groups:
                traits["admin_groups"] = sorted(auth.admin_groups)
    config: dict[str, Any] = {"JupyterHub": {"authenticator_class": entry}, cls: traits}
    if base:
        config["Authenticator"] = base
    return config


def kube_values(auth: HubAuth, domain: str) -> dict[str, Any]:
    """z2jh values (under `jupyterhub`) for a Kubernetes hub: `hub.config`, and the client
    secret as an environment variable from the Secret hubfleet writes (`KUBE_SECRET`)."""
    return {
        "hub": {
            "config": hub_config(auth, domain),
            "extraEnv": {
                SECRET_ENV: {
                    "valueFrom": {"secretKeyRef": {"name": KUBE_SECRET, "key": KUBE_SECRET_KEY}}
                }
            },
        }
    }


def version_values(version: str) -> dict[str, Any]:
    """z2jh values that restart the hub when its stored client secret changes: a pod
    annotation with the (not secret) time it was stored."""
    return {"jupyterhub": {"hub": {"annotations": {VERSION_ANNOTATION: version}}}}


def authenticator_of(values: dict[str, Any]) -> str | None:
    """The authenticator class a hub's own values (chart defaults left out) set, if any."""
    config = ((values.get("jupyterhub") or {}).get("hub") or {}).get("config") or {}
    found = (config.get("JupyterHub") or {}).get("authenticator_class")
    return str(found) if found else None
