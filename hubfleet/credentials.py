"""The credential inventory: what hubfleet manages, how old it is, and what is due.

Pure: no Prefect, no network. `tasks/` gathers the records (from blocks, cloud APIs,
Kubernetes, TLS handshakes); this module ages them against the fleet's policy, decides
what a rotation run should touch, and parses the `scope` an operator gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from hubfleet.errors import HubfleetError
from hubfleet.model import Cluster, CredentialPolicy, Fleet, Provider


class CredentialKind(StrEnum):
    """Every kind of credential hubfleet knows about."""

    hub_ops_token = "hub-ops-token"  # a hub's hubfleet-ops user token (issued with an expiry)
    aws_access_key = "aws-access-key"  # a cluster's deployer IAM user key
    gcp_service_account_key = "gcp-sa-key"  # a cluster's deployer service-account key
    azure_client_secret = "azure-client-secret"  # a cluster's deployer app secret
    kube_service_account_token = "kube-sa-token"  # a kubeconfig cluster's deployer token
    hub_secret = "hub-secret"  # proxy auth token, cookie secret (rotate only when asked)
    tls_certificate = "tls-certificate"  # seen by health probes; renewed elsewhere
    oauth_client_secret = "oauth-client-secret"  # a hub's login client (rotated by hand)

    @property
    def scheduled(self) -> bool:
        """Rotated by the weekly run when due. Hub secrets log every user out, so they are
        rotated only when explicitly asked for; TLS certificates are only reported."""
        return self not in (
            CredentialKind.hub_secret,
            CredentialKind.tls_certificate,
            CredentialKind.oauth_client_secret,
        )


#: The deployer credential each provider uses (local hubs have none).
DEPLOYER_KIND: dict[Provider, CredentialKind] = {
    Provider.aws: CredentialKind.aws_access_key,
    Provider.gcp: CredentialKind.gcp_service_account_key,
    Provider.azure: CredentialKind.azure_client_secret,
    Provider.kubeconfig: CredentialKind.kube_service_account_token,
}


class Status(StrEnum):
    ok = "ok"
    expiring = "expiring"  # past policy within the warning window, or expiring soon
    overdue = "overdue"  # past its policy max age
    expired = "expired"  # past its hard expiry (e.g. a TLS certificate)
    unknown = "unknown"  # no creation time known (e.g. never stored)


@dataclass(frozen=True)
class CredentialRecord:
    """One credential in the inventory. Never holds a secret value: only its identity."""

    cluster: str
    hub: str | None
    kind: CredentialKind
    ident: str  # non-secret identity: service name, access key id, key name, secret name
    created_at: datetime | None
    last_rotated: datetime | None
    max_age: timedelta | None
    consumed_by: tuple[str, ...] = ()
    expires_at: datetime | None = None  # a hard expiry, where the credential has one
    note: str = ""

    @property
    def owner(self) -> str:
        return f"{self.cluster}/{self.hub}" if self.hub else self.cluster

    def age(self, now: datetime) -> timedelta | None:
        """Time since the credential was last replaced (or created)."""
        since = self.last_rotated or self.created_at
        return now - since if since else None

    def status(self, now: datetime, warn_within: timedelta) -> Status:
        """ok, expiring (within `warn_within` of its limit), overdue, expired, unknown."""
        if self.expires_at is not None:
            if now >= self.expires_at:
                return Status.expired
            if self.expires_at - now <= warn_within:
                return Status.expiring
        age = self.age(now)
        if age is None:
            return Status.unknown if self.expires_at is None else Status.ok
        if self.max_age is not None:
            if age >= self.max_age:
                return Status.overdue
            if self.max_age - age <= warn_within:
                return Status.expiring
        return Status.ok

    def due(self, now: datetime, max_age: timedelta | None) -> bool:
        """Should a rotation run replace it: older than `max_age` (else its policy)?"""
        limit = max_age if max_age is not None else self.max_age
        age = self.age(now)
        return age is None or limit is None or age >= limit


def policy_max_age(policy: CredentialPolicy, kind: CredentialKind) -> timedelta | None:
    """The fleet policy's max age for a kind (None: no age limit, e.g. TLS certificates)."""
    return {
        CredentialKind.hub_ops_token: policy.hub_ops_token,
        CredentialKind.aws_access_key: policy.deployer,
        CredentialKind.gcp_service_account_key: policy.deployer,
        CredentialKind.azure_client_secret: policy.deployer,
        CredentialKind.kube_service_account_token: policy.deployer,
        CredentialKind.hub_secret: policy.hub_secret,
        CredentialKind.tls_certificate: None,
        CredentialKind.oauth_client_secret: policy.oauth_client,
    }[kind]


# --- scope ------------------------------------------------------------------------------


class BadScope(HubfleetError):
    """A rotation scope that does not parse or names nothing in the fleet."""


SCOPE_FORMS = (
    "'all', 'cluster:<cluster>', 'hub:<cluster>/<hub>', 'kind:<kind>' or "
    "'hub-secret:<cluster>/<hub>'"
)

#: What the inventory and rotation runs say of OAuth client secrets: GitHub, Google and
#: CILogon have no API that issues a new client secret, so a person does it.
ROTATE_BY_HAND = (
    "rotate by hand: issue a new secret in the provider's console, then "
    "`hubfleet oauth-client set <cluster> <hub>` and redeploy"
)

#: What rotating hub secrets does to users; said up front in logs, plans and the CLI.
HUB_SECRET_WARNING = "the hub is redeployed and every user must log in again"


@dataclass(frozen=True)
class Scope:
    """What a rotation run covers: everything, one cluster, one hub, one kind, or one hub's
    hub secrets (`hub-secret:<cluster>/<hub>`, the explicit request for just that hub)."""

    what: str  # all | cluster | hub | kind | hub-secret
    cluster: str | None = None
    hub: str | None = None
    kind: CredentialKind | None = None

    def covers(self, record: CredentialRecord) -> bool:
        if self.what == "all":
            return True
        if self.what == "kind":
            return record.kind is self.kind
        if self.what == "cluster":
            return record.cluster == self.cluster
        if self.what == "hub-secret" and record.kind is not CredentialKind.hub_secret:
            return False
        return record.cluster == self.cluster and record.hub == self.hub

    @property
    def asks_for_hub_secrets(self) -> bool:
        """Hub secrets are rotated only when the scope names them explicitly: `kind:hub-secret`
        (every hub of the fleet) or `hub-secret:<cluster>/<hub>` (one hub). 'all', a cluster
        or a hub scope never rotates them."""
        if self.what == "hub-secret":
            return True
        return self.what == "kind" and self.kind is CredentialKind.hub_secret

    def __str__(self) -> str:
        if self.what == "all":
            return "all"
        if self.what == "kind":
            return f"kind:{self.kind}"
        if self.what == "cluster":
            return f"cluster:{self.cluster}"
        return f"{self.what}:{self.cluster}/{self.hub}"


def parse_scope(text: str, fleet: Fleet) -> Scope:
    """Parse and check a scope against the fleet; the error names the value and the fix."""
    text = text.strip()
    if text == "all":
        return Scope("all")
    what, sep, rest = text.partition(":")
    if not sep or not rest:
        raise BadScope(f"scope {text!r} is not understood; use {SCOPE_FORMS}")
    if what == "kind":
        kinds = [k.value for k in CredentialKind]
        if rest not in kinds:
            raise BadScope(f"scope {text!r}: unknown kind {rest!r}; allowed: {', '.join(kinds)}")
        return Scope("kind", kind=CredentialKind(rest))
    if what == "cluster":
        _cluster(fleet, rest, text)
        return Scope("cluster", cluster=rest)
    if what in ("hub", "hub-secret"):
        cluster, slash, hub = rest.partition("/")
        if not slash or not hub:
            raise BadScope(f"scope {text!r}: a hub is named as {what}:<cluster>/<hub>")
        spec = _cluster(fleet, cluster, text)
        if hub not in [h.name for h in spec.hubs]:
            known = ", ".join(h.name for h in spec.hubs) or "none"
            raise BadScope(f"scope {text!r}: cluster {cluster!r} has no hub {hub!r} ({known})")
        return Scope(what, cluster=cluster, hub=hub)
    raise BadScope(f"scope {text!r} is not understood; use {SCOPE_FORMS}")


def _cluster(fleet: Fleet, name: str, text: str) -> Cluster:
    try:
        return fleet.cluster(name)
    except LookupError:
        known = ", ".join(c.name for c in fleet.clusters) or "none"
        raise BadScope(f"scope {text!r}: no cluster {name!r} (clusters: {known})") from None


# --- planning a run ---------------------------------------------------------------------


@dataclass
class RotationPlan:
    """What a rotation run will rotate, and what it leaves and why."""

    rotate: list[CredentialRecord] = field(default_factory=list)
    skipped: list[tuple[CredentialRecord, str]] = field(default_factory=list)


def plan_rotation(
    records: list[CredentialRecord],
    scope: Scope,
    now: datetime,
    max_age: timedelta | None = None,
) -> RotationPlan:
    """Pick the records in scope that are due; say why each other one is left alone.

    Hub secrets are picked only when the scope asks for them: `hub-secret:<c>/<h>` rotates
    that hub's now, `kind:hub-secret` every hub's that is due (policy or `max_age`)."""
    plan = RotationPlan()
    for record in records:
        if not scope.covers(record):
            continue
        if record.kind is CredentialKind.tls_certificate:
            plan.skipped.append((record, "reported only: renewed by the certificate issuer"))
        elif record.kind is CredentialKind.oauth_client_secret:
            plan.skipped.append((record, record.note or ROTATE_BY_HAND))
        elif record.kind is CredentialKind.hub_secret and not scope.asks_for_hub_secrets:
            plan.skipped.append(
                (
                    record,
                    "rotate on request only (scope 'hub-secret:<cluster>/<hub>' or "
                    f"'kind:hub-secret'): {HUB_SECRET_WARNING}",
                )
            )
        elif record.created_at is None and record.last_rotated is None:
            plan.skipped.append((record, f"nothing stored to rotate ({record.note or 'unknown'})"))
        elif scope.what == "hub-secret":
            plan.rotate.append(record)  # asked for by name: rotated now, whatever its age
        elif not record.due(now, max_age):
            age = record.age(now)
            plan.skipped.append((record, f"not due (age {format_age(age)})"))
        else:
            plan.rotate.append(record)
    return plan


def format_age(age: timedelta | None) -> str:
    """'3d 4h', '5h 2m', '40s', or '-' when unknown."""
    if age is None:
        return "-"
    seconds = int(age.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    if minutes:
        return f"{sign}{minutes}m"
    return f"{sign}{secs}s"
