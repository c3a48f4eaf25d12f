"""The fleet model: one typed picture of `fleet/`, validated once and trusted after.

Every model forbids unknown keys, so a typo in the registry fails validation instead of
being silently ignored. Rules that span several fields or files (unique names, values
files that exist, an event's end after its start) live in `hubfleet.loader`, where they can
name the exact file and line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
)

from hubfleet.auth import HubAuth
from hubfleet.prices import PriceTable
from hubfleet.terraform_inputs import TerraformSettings

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DOMAIN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$"
CRON = r"^\S+( \S+){4}$"
SEMVER = r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$"
AWS_ACCOUNT = r"^\d{12}$"
UUID = r"^[0-9a-f-]{36}$"
EXPORT_URL = r"^(file:///.*|(s3|az|gs)://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$"

#: What to tell a user whose value does not match one of the patterns above.
PATTERN_HINTS = {
    DNS_LABEL: "not DNS-safe; use lower-case letters, digits and '-', starting and ending "
    "with a letter or digit, at most 63 characters",
    DOMAIN: "not a domain name; use lower-case DNS labels separated by dots, e.g. hub.example.org",
    CRON: "not a cron expression; use five fields, e.g. '0 2 * * *'",
    SEMVER: "not a chart version; use semver, e.g. 0.1.0",
    AWS_ACCOUNT: "not an AWS account id; use the 12 digits, quoted",
    UUID: "not a subscription id; use the lower-case UUID",
    EXPORT_URL: "not an export location; use file:///dir, s3://bucket/prefix, "
    "az://container/prefix or gs://bucket/prefix",
}

#: Client-side API rate limit per cluster (cluster.yaml `api_qps`, `api_burst`); see
#: README "Hub deployment and fleet upgrades". Measured in benchmarks/bench_apiserver.py.
DEFAULT_API_QPS = 20.0
DEFAULT_API_BURST = 40

#: A DNS label (RFC 1123): it becomes a Kubernetes namespace, a Helm release and a URL part.
DnsName = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]
Domain = Annotated[str, StringConstraints(pattern=DOMAIN, max_length=253)]
CronExpr = Annotated[str, StringConstraints(pattern=CRON)]
ChartVersion = Annotated[str, StringConstraints(pattern=SEMVER)]


class Strict(BaseModel):
    """Base for every registry model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(StrEnum):
    gcp = "gcp"
    aws = "aws"
    azure = "azure"
    kubeconfig = "kubeconfig"
    local = "local"


class Tier(StrEnum):
    staging = "staging"
    prod = "prod"


class HubKind(StrEnum):
    standing = "standing"
    event = "event"


class UseCase(StrEnum):
    """What a hub is for; its preset (hubfleet/presets/<use_case>.yaml) sets defaults."""

    learning = "learning"
    research = "research"
    event = "event"


class DataPolicy(StrEnum):
    export = "export"
    delete = "delete"


# --- fleet.yaml -------------------------------------------------------------------------


class Schedules(Strict):
    """Cron schedules (UTC) of the recurring operations."""

    health_deep: CronExpr = Field("0 2 * * *", description="Deep health sweep of every hub.")
    health_shallow: CronExpr = Field("*/15 * * * *", description="Shallow health sweep.")
    upgrade: CronExpr = Field("0 3 * * *", description="Fleet upgrade run.")
    reap_events: CronExpr = Field("0 * * * *", description="Expire overdue event hubs.")
    rotate_credentials: CronExpr = Field("0 4 * * 1", description="Credential rotation.")
    detect_drift: CronExpr = Field("30 2 * * *", description="Terraform drift detection.")
    fleet_report: CronExpr = Field(
        "0 6 1 * *", description="Monthly fleet ops report (flows/fleet_report.py)."
    )
    backup: CronExpr = Field(
        "0 1 * * *", description="Backup of every standing hub (flows/backup_hub.py)."
    )


class CredentialPolicy(Strict):
    """How old each kind of credential may get before `rotate_credentials` replaces it."""

    hub_ops_token: timedelta = Field(
        timedelta(days=30), gt=timedelta(0), description="Max age of a hub's ops token."
    )
    deployer: timedelta = Field(
        timedelta(days=90),
        gt=timedelta(0),
        description="Max age of a cluster's deployer credential (cloud key or SA token).",
    )
    hub_secret: timedelta = Field(
        timedelta(days=365),
        gt=timedelta(0),
        description="Max age of hub secrets (proxy token, cookie secret); rotated only "
        "when asked, because users must log in again.",
    )
    oauth_client: timedelta = Field(
        timedelta(days=365),
        gt=timedelta(0),
        description="Max age of a hub's OAuth client secret (hubfleet.auth); the providers "
        "have no API to rotate it, so the inventory says when to rotate it by hand.",
    )
    warn_within: timedelta = Field(
        timedelta(days=14),
        ge=timedelta(0),
        description="Flag a credential (or TLS certificate) this long before its limit.",
    )


class BackupPolicy(Strict):
    """Where standing hubs' homes and hub databases are backed up, and how many copies stay."""

    url: Annotated[str, StringConstraints(pattern=EXPORT_URL)] | None = Field(
        None,
        description="file:///dir, s3://bucket/prefix, az://container/prefix or "
        "gs://bucket/prefix; each copy goes under <url>/<cluster>/<hub>/<time>. Default on "
        "local: <data dir>/backups; a Kubernetes hub needs a bucket.",
    )
    credentials: DnsName | None = Field(
        None,
        description="Block holding the cloud login (AwsCredentials, AzureBlobStorageCredentials "
        "or GcpCredentials); default: the SDK's own credential chain.",
    )
    keep: int = Field(
        7,
        ge=1,
        le=1000,
        description="Verified copies kept per hub; older ones are deleted only after a new "
        "copy has verified.",
    )


class FleetSettings(Strict):
    """`fleet/fleet.yaml`: defaults for every cluster and hub."""

    name: DnsName = Field(description="Name of this fleet, shown in reports.")
    chart_version: ChartVersion = Field(
        "4.4.0",
        description="Zero to JupyterHub chart version every hub runs unless it sets its own.",
    )
    chart_repository: Annotated[str, StringConstraints(pattern=r"^(https?|oci)://\S+$")] = Field(
        "https://hub.jupyter.org/helm-chart/",
        description="Where helm fetches the Zero to JupyterHub chart (a mirror for "
        "air-gapped fleets); HUBFLEET_CHART_REPOSITORY overrides it.",
    )
    parallelism: int = Field(2, ge=1, le=50, description="Hubs changed at once per cluster.")
    values: list[str] = Field(
        default_factory=list,
        description="Values files (relative to fleet/) applied to every hub.",
    )
    notify: list[DnsName] = Field(
        default_factory=list, description="Names of notification blocks told about failures."
    )
    organizer_mail: DnsName | None = Field(
        None,
        description="Name of the SMTP Server block (blocks/smtp_server.py) event organizers "
        "are mailed through: reminders, and the expiry notice with where the data went.",
    )
    schedules: Schedules = Schedules()
    credentials: CredentialPolicy = CredentialPolicy()
    backup: BackupPolicy = BackupPolicy()
    prices: PriceTable | None = Field(
        None,
        description="Overrides of the price table `hubfleet usage` estimates cost with "
        '(hubfleet/prices.yaml; README "Usage and cost").',
    )


# --- cluster.yaml -----------------------------------------------------------------------


class GcpSettings(Strict):
    project: str = Field(min_length=6, description="GCP project id.")
    region: str = Field(description="GCP region, e.g. us-central1.")
    zone: str | None = Field(None, description="Zone for a zonal cluster; regional if unset.")


class AwsSettings(Strict):
    account_id: Annotated[str, StringConstraints(pattern=AWS_ACCOUNT)] = Field(
        description="12-digit AWS account id."
    )
    region: str = Field(description="AWS region, e.g. us-west-2.")


class AzureSettings(Strict):
    subscription_id: Annotated[str, StringConstraints(pattern=UUID)] = Field(
        description="Azure subscription id (a UUID)."
    )
    resource_group: str = Field(description="Resource group holding the cluster.")
    location: str = Field(description="Azure location, e.g. westeurope.")


class KubeconfigSettings(Strict):
    context: str = Field(description="Context in the kubeconfig stored in the cluster block.")


class LocalSettings(Strict):
    data_dir: str | None = Field(
        None,
        description="Where hub state lives; default is the user's data dir "
        "(HUBFLEET_DATA_DIR overrides both).",
    )


class PreWarm(Strict):
    lead_time: timedelta = Field(
        timedelta(hours=1), description="How long before start capacity is warmed."
    )
    size: int | None = Field(
        None, ge=0, description="Placeholder pods; default is the expected attendees."
    )


class ExportTarget(Strict):
    """Where an event hub's home directories go before it is removed."""

    url: Annotated[str, StringConstraints(pattern=EXPORT_URL)] = Field(
        description="file:///dir, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix."
    )
    credentials: DnsName | None = Field(
        None,
        description="Block holding the cloud login (AwsCredentials, AzureBlobStorageCredentials "
        "or GcpCredentials); default: the SDK's own credential chain.",
    )


class EventSpec(Strict):
    """When an event hub exists, who runs it, and what happens to its data."""

    start: AwareDatetime = Field(description="When attendees arrive (with a UTC offset).")
    end: AwareDatetime = Field(description="When the event ends (with a UTC offset).")
    attendees: int = Field(ge=1, le=100_000, description="Expected number of attendees.")
    organizers: list[str] = Field(min_length=1, description="Emails told about expiry.")
    data_policy: DataPolicy = Field(
        description="export: homes saved before teardown; delete: homes deleted. Optional "
        "with use_case: event (its preset's default applies)."
    )
    grace: timedelta = Field(
        timedelta(hours=24), description="How long after end the hub is expired."
    )
    prewarm: PreWarm | None = Field(
        None,
        description="Warm capacity before start; with use_case: event the preset's lead time "
        "applies when unset.",
    )
    timezone: str | None = Field(
        None, description="IANA time zone used when telling organizers times, e.g. Europe/Paris."
    )
    reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(hours=48), timedelta(hours=2)],
        description="Organizers are reminded this long before expiry (end + grace).",
    )
    export: ExportTarget | None = Field(
        None,
        description="Where homes are exported (data_policy: export); default on local: "
        "a directory under the data dir.",
    )

    # Keys the loader filled in from the use case's preset (`event_defaults`), for
    # `hubfleet show`; not a registry key (a private attribute cannot be set from YAML).
    _from_preset: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def from_preset(self) -> frozenset[str]:
        """Event keys that came from the use case's preset, not from the hub's own file."""
        return self._from_preset

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r}; use an IANA name such as Europe/Paris"
                ) from None
        return value

    @property
    def expires_at(self) -> datetime:
        return self.end + self.grace


class Hub(Strict):
    """One JupyterHub: a Helm release in its own namespace, or a local process."""

    name: DnsName = Field(description="Hub name, unique in its cluster.")
    domain: Domain = Field(description="Where users reach the hub; unique in the fleet.")
    tier: Tier = Field(description="staging hubs are changed first and gate prod.")
    kind: HubKind = Field(description="standing, or event (time-bound, expired automatically).")
    values: list[str] = Field(
        default_factory=list, description="Values files, relative to the cluster directory."
    )
    chart_version: ChartVersion | None = Field(None, description="Override, e.g. for a canary.")
    event: EventSpec | None = Field(None, description="Required when kind is event.")
    use_case: UseCase | None = Field(
        None,
        description="learning | research | event: the preset layered under the hub's values "
        "(hubfleet.presets); none: no preset.",
    )
    auth: HubAuth | None = Field(
        None,
        description="Who logs in and how (hubfleet.auth): github, google, cilogon or oidc; "
        "required for prod hubs on Kubernetes.",
    )


class Cluster(Strict):
    """`fleet/clusters/<name>/cluster.yaml`."""

    name: DnsName = Field(description="Cluster name; must equal its directory name.")
    provider: Provider = Field(description="Where the cluster comes from.")
    gcp: GcpSettings | None = None
    aws: AwsSettings | None = None
    azure: AzureSettings | None = None
    kubeconfig: KubeconfigSettings | None = None
    local: LocalSettings | None = None
    terraform: TerraformSettings | None = Field(
        None, description="How Terraform builds the cluster (hubfleet.terraform_inputs)."
    )
    hub_access: Literal["domain", "port-forward"] = Field(
        "domain",
        description="How operations reach a hub over HTTP: `domain` (https://<domain>, "
        "through the cluster's ingress, as users do) or `port-forward` (its proxy through the "
        "Kubernetes API with the cluster's credentials, as kubectl port-forward: for hubs "
        "with no public DNS yet, private clusters, CI).",
    )
    api_qps: float = Field(
        DEFAULT_API_QPS,
        ge=0,
        le=10_000,
        description="Client-side limit on requests per second to the cluster's API server, "
        "for each helm process (`--qps`) and for hubfleet's own Kubernetes client (shared by "
        "every operation on the cluster in one process). At most `parallelism` helm "
        "processes run per cluster, so hubfleet drives at most (parallelism + 1) x api_qps. "
        "0 turns the limit off (helm gets `--qps -1`): only for measuring.",
    )
    api_burst: int = Field(
        DEFAULT_API_BURST,
        ge=1,
        le=10_000,
        description="Requests a client may send at once above api_qps before it is held to "
        "api_qps (helm `--burst-limit`, and the same bucket for hubfleet's client).",
    )
    hubs: list[Hub] = Field(default_factory=list)

    def hub(self, name: str) -> Hub:
        for hub in self.hubs:
            if hub.name == name:
                return hub
        known = ", ".join(h.name for h in self.hubs) or "none"
        raise LookupError(f"cluster {self.name!r} has no hub {name!r} (hubs: {known})")


# --- the whole fleet --------------------------------------------------------------------


class Fleet(BaseModel):
    """The validated fleet: settings, clusters, and where they were read from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    root: Path
    settings: FleetSettings
    clusters: list[Cluster]

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise LookupError(f"fleet has no cluster {name!r} (clusters: {known})")

    def cluster_dir(self, cluster: str) -> Path:
        return self.root / "clusters" / cluster

    def hub_values_files(self, cluster: str, hub: Hub) -> list[Path]:
        """Values files of a hub in layering order: fleet-wide, then the hub's own."""
        fleet_files = [self.root / f for f in self.settings.values]
        return fleet_files + [self.cluster_dir(cluster) / f for f in hub.values]

    def summary(self) -> str:
        hubs = [h for c in self.clusters for h in c.hubs]
        events = sum(1 for h in hubs if h.kind is HubKind.event)
        return f"{len(self.clusters)} clusters, {len(hubs)} hubs, {events} event hubs"


ProviderName = Literal["gcp", "aws", "azure", "kubeconfig", "local"]
