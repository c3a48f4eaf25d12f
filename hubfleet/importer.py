"""`hubfleet import`: a config repository laid out like 2i2c-org/infrastructure's
(`config/clusters/<cluster>/cluster.yaml` + values files) as a hubfleet fleet.

Pure: reads the source, builds every file of the fleet in memory, and writes nothing
until every problem is known (`write_fleet` then writes it all at once, checked by the
loader first). What it decides, it says:

- providers: gcp, aws, azure and kubeconfig sections are mapped field by field; a field
  hubfleet requires that the source does not have (an Azure subscription id, a kubeconfig
  context) is never invented: the user passes it (`--set CLUSTER.SECTION.FIELD=VALUE`) or
  the import stops, naming the option.
- values files: basehub files nest z2jh values under `jupyterhub:`, as hubfleet's hub chart
  does, so they are copied byte for byte; a top-level block hubfleet's chart does not have
  (`nfs`, `jupyterhub-home-nfs`, ...) is cut out of the copy and listed. daskhub files nest
  basehub under `basehub:`: each becomes a generated file holding the `basehub.jupyterhub`
  block un-nested to `jupyterhub:` (its lines as written, dedented), and the rest is listed.
  The source repository is never changed.
- tier: `TIER_RULE`, every hub so decided listed for review (or set with `--tier`).
- secrets: sops-encrypted `enc-*` files are never decrypted, read beyond their sops
  marker, or copied: each is listed with the command that loads it into the hub's
  secret-values block.
- everything else that cannot be carried over: `file:line: key: why`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from hubfleet.errors import HubfleetError
from hubfleet.layers import ValuesInvalid, read_values_files, to_plain
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.model import DNS_LABEL, DOMAIN, SEMVER, Tier
from hubfleet.values import secret_values_block
from hubfleet.yamlfile import Problem, YamlDoc, read_yaml

#: The z2jh chart version an imported fleet runs unless told otherwise.
DEFAULT_CHART_VERSION = "4.4.0"
#: Top-level keys of a hub values file that hubfleet's hub chart has.
CHART_KEYS = ("jupyterhub", "daskGateway")
TIER_RULE = (
    "a hub whose name contains 'staging' is tier staging (the rule 2i2c's deployer uses to "
    "deploy staging hubs before prod); every other hub is tier prod"
)

#: Why a cluster.yaml key is not carried over.
_CLUSTER_KEYS = {
    "image_repo": "2i2c's hub image repository; hubfleet has no such setting: set "
    "jupyterhub.singleuser.image in the hubs' values",
    "support": "2i2c's support chart values; hubfleet's support chart is its own "
    "(helm/support, `hubfleet deploy-support`): review these files against it",
    "tenancy": "hubfleet has no tenancy setting (every hub has its own namespace)",
    "account": "the cloud console account; hubfleet does not use it",
}
_CREDENTIAL = (
    "sops-encrypted deployer credential, never imported: hubfleet reaches the cluster "
    "through the ClusterAccess block named {cluster!r} (a kubeconfig, context and server); "
    "store one there (see README 'Moving an existing z2jh fleet in')"
)
_SECTION_KEYS = {
    "key": _CREDENTIAL,
    "file": _CREDENTIAL,
    "cluster": "the provider's cluster name; hubfleet reaches the cluster through its "
    "ClusterAccess block {cluster!r}, whose kubeconfig names it",
    "clusterName": "the provider's cluster name; hubfleet reaches the cluster through its "
    "ClusterAccess block {cluster!r}, whose kubeconfig names it",
    "clusterType": "hubfleet's AWS clusters are EKS (terraform_modules/eks); nothing to set",
    "billing": "2i2c's billing records; hubfleet has no billing settings",
}
_HUB_KEYS = {
    "display_name": "hubfleet has no display name; the hub is named by name and domain",
    "uptime_check": "hubfleet's health probes (`hubfleet health`) have no per-hub expected status",
    "auth0": "2i2c's retired Auth0 setting; configure authentication in jupyterhub.hub.config",
    "domain_override_file": "hubfleet has one domain per hub: to move the hub, edit its domain",
}
_DASK = (
    "daskhub's dask-gateway chart values do not apply: hubfleet's optional Dask Gateway is "
    "`daskGateway:` in the hub's values (enabled: true, image.name, ...; see "
    "helm/hub/values.yaml); enable it there if this hub needs Dask"
)
_TOP_KEYS = {
    "dask-gateway": _DASK,
    "nfs": "basehub's NFS home directories; hubfleet's hub chart has no NFS setting: "
    "configure storage with jupyterhub.singleuser.storage",
    "jupyterhub-home-nfs": "basehub's in-cluster NFS server; hubfleet's hub chart has none: "
    "configure storage with jupyterhub.singleuser.storage",
    "global": "basehub's global values; hubfleet's hub chart has none",
}
_NOT_IN_CHART = "not a key of hubfleet's hub chart (its top level is jupyterhub and daskGateway)"
_CUSTOM = (
    "kept in the file, but without effect: only basehub's own hub configuration reads "
    "jupyterhub.custom (z2jh's chart ignores it); move what it sets into z2jh settings"
)

_SETTABLE = {
    "gcp": ("project", "region", "zone"),
    "aws": ("account_id", "region"),
    "azure": ("subscription_id", "resource_group", "location"),
    "kubeconfig": ("context",),
}
_EXAMPLES = {
    "account_id": "123456789012",
    "subscription_id": "00000000-0000-0000-0000-000000000000",
    "location": "westeurope",
    "context": "my-context",
}
_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")


@dataclass(frozen=True)
class TierDecision:
    cluster: str
    hub: str
    tier: Tier
    by_rule: bool
    where: str  # file:line of the hub's name in the source

    def __str__(self) -> str:
        how = "by the rule; review" if self.by_rule else "as given by --tier"
        return f"{self.cluster}/{self.hub}: {self.tier.value} ({how}) [{self.where}]"


@dataclass(frozen=True)
class SecretLayer:
    cluster: str
    hub: str
    source: Path
    command: str
    note: str = ""

    def __str__(self) -> str:
        block = secret_values_block(self.cluster, self.hub)
        note = f" ({self.note})" if self.note else ""
        where = f"{self.cluster}/{self.hub}: {_show(self.source)}"
        return f"{where} -> block {block}{note}\n    {self.command}"


@dataclass(frozen=True)
class OutFile:
    """One file of the new fleet: its text, and where it came from."""

    text: str
    origin: str  # "copied from X", "generated from X (...)", "written"


@dataclass
class ImportResult:
    source: Path
    files: dict[Path, OutFile] = field(default_factory=dict)  # relative to the fleet root
    tiers: list[TierDecision] = field(default_factory=list)
    secrets: list[SecretLayer] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)  # not carried over
    problems: list[Problem] = field(default_factory=list)  # the import cannot be written
    clusters: list[str] = field(default_factory=list)

    @property
    def hubs(self) -> int:
        return len(self.tiers)


class ImportFailed(HubfleetError):
    """The source cannot be imported as it is; nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(
            "\n".join(str(p) for p in problems)
            + f"\nimport failed: {len(problems)} problem(s); nothing was written"
        )


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- reading the source -----------------------------------------------------------------


def cluster_files(source: Path) -> list[Path]:
    """The cluster.yaml files of a config repository (its root, `config/` or
    `config/clusters/`), sorted; `ImportFailed` if there are none."""
    for base in (source / "config" / "clusters", source / "clusters", source):
        found = sorted(base.glob("*/cluster.yaml"))
        if found:
            return found
    raise ImportFailed(
        [
            Problem(
                source,
                0,
                "(directory)",
                "no config/clusters/<cluster>/cluster.yaml found; pass the root of a "
                "config repository laid out like 2i2c-org/infrastructure",
            )
        ]
    )


def parse_settings(items: list[str]) -> dict[tuple[str, str, str], str]:
    """`--set CLUSTER.SECTION.FIELD=VALUE` options, checked."""
    out: dict[tuple[str, str, str], str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        parts = name.split(".")
        if not sep or len(parts) != 3 or not value:
            raise HubfleetError(
                f"--set {item!r}: write CLUSTER.SECTION.FIELD=VALUE, e.g. "
                "--set mycluster.azure.subscription_id=00000000-0000-0000-0000-000000000000"
            )
        cluster, section, key = parts
        if key not in _SETTABLE.get(section, ()):
            known = "; ".join(f"{s}: {', '.join(f)}" for s, f in _SETTABLE.items())
            raise HubfleetError(f"--set {item!r}: no field {section}.{key}; settable: {known}")
        out[(cluster, section, key)] = value
    return out


def parse_tiers(items: list[str]) -> dict[tuple[str, str], Tier]:
    """`--tier CLUSTER/HUB=staging|prod` options, checked."""
    out: dict[tuple[str, str], Tier] = {}
    for item in items:
        name, sep, value = item.partition("=")
        cluster, slash, hub = name.partition("/")
        if not sep or not slash or value not in (t.value for t in Tier):
            raise HubfleetError(f"--tier {item!r}: write CLUSTER/HUB=staging or CLUSTER/HUB=prod")
        out[(cluster, hub)] = Tier(value)
    return out


def import_config(
    source: Path,
    name: str,
    chart_version: str = DEFAULT_CHART_VERSION,
    settings: Mapping[tuple[str, str, str], str] | None = None,
    tiers: Mapping[tuple[str, str], Tier] | None = None,
) -> ImportResult:
    """The fleet for the config repository at `source`, in memory. Problems that stop the
    import are in `problems` (nothing may be written then)."""
    result = ImportResult(source=source)
    if not re.match(DNS_LABEL, name):
        result.problems.append(
            Problem("--name", 0, "name", f"{name!r} is not DNS-safe; pass --name with one")
        )
    if not re.match(SEMVER, chart_version):
        result.problems.append(
            Problem("--chart-version", 0, "chart_version", f"{chart_version!r} is not semver")
        )
    settings = dict(settings or {})
    tiers = dict(tiers or {})
    fleet_yaml = {"name": name, "chart_version": chart_version}
    result.files[Path("fleet.yaml")] = OutFile(
        "# Imported by `hubfleet import` from "
        f"{_show(source)}. chart_version: the Zero to JupyterHub chart version every hub "
        "runs.\n" + _dump(fleet_yaml),
        "written",
    )
    values_out: dict[Path, tuple[str, Path]] = {}  # out path -> (chart, source) written
    for path in cluster_files(source):
        _import_cluster(result, path, settings, tiers, values_out)
    used = {(c, s, f) for c in result.clusters for s in _SETTABLE for f in _SETTABLE[s]}
    for key in settings:
        if key not in used:
            result.problems.append(
                Problem(
                    "--set",
                    0,
                    ".".join(key),
                    f"no cluster {key[0]!r} with provider {key[1]!r} was imported",
                )
            )
    hubs = {(t.cluster, t.hub) for t in result.tiers}
    for cluster, hub in tiers:
        if (cluster, hub) not in hubs:
            result.problems.append(
                Problem("--tier", 0, f"{cluster}/{hub}", "no such hub was imported")
            )
    result.dropped.sort(key=lambda p: (str(p.file), p.line))
    return result


def _import_cluster(
    result: ImportResult,
    path: Path,
    settings: dict[tuple[str, str, str], str],
    tiers: dict[tuple[str, str], Tier],
    values_out: dict[Path, tuple[str, Path]],
) -> None:
    doc, problems = read_yaml(path)
    if doc is None:
        result.problems += problems
        return
    data = doc.data
    directory = path.parent
    name = data.get("name", directory.name)
    if not isinstance(name, str) or not re.match(DNS_LABEL, name):
        result.problems.append(
            doc.problem(("name",), f"{name!r} is not DNS-safe; hubfleet cluster names are")
        )
        return
    provider = data.get("provider")
    if provider not in _SETTABLE:
        result.problems.append(
            doc.problem(
                ("provider",), f"found {provider!r}; importable: gcp, aws, azure, kubeconfig"
            )
        )
        return
    result.clusters.append(name)
    out: dict[str, Any] = {"name": name, "provider": provider}
    section = data.get(provider)
    if not isinstance(section, Mapping):
        result.problems.append(
            doc.problem((provider,), f"a '{provider}:' section is required for this provider")
        )
        return
    mapped = _provider_section(doc, name, provider, section, settings, result)
    out[provider] = mapped
    for key in data:
        if key in ("name", "provider", provider, "hubs"):
            continue
        why = _CLUSTER_KEYS.get(str(key))
        if key in _SETTABLE:
            why = f"a '{key}:' section, but this cluster's provider is {provider!r}"
        if key == "account" and provider == "aws":
            continue  # read as aws.account_id
        result.dropped.append(doc.problem((key,), why or "not a cluster.yaml key hubfleet knows"))

    hubs_out = []
    items = data.get("hubs") or []
    if not isinstance(items, list):
        result.problems.append(doc.problem(("hubs",), "expected a list of hubs"))
        items = []
    for i, item in enumerate(items):
        hub = _import_hub(result, doc, name, i, item, tiers, values_out)
        if hub is not None:
            hubs_out.append(hub)
    out["hubs"] = hubs_out
    header = f"# Imported by `hubfleet import` from {_show(path)}.\n"
    result.files[Path("clusters") / name / "cluster.yaml"] = OutFile(
        header + _dump(out), f"generated from {_show(path)}"
    )


def _provider_section(
    doc: YamlDoc,
    cluster: str,
    provider: str,
    section: Mapping[str, Any],
    settings: dict[tuple[str, str, str], str],
    result: ImportResult,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if provider == "gcp":
        if "project" in section:
            out["project"] = str(section["project"])
        zone = str(section.get("zone", ""))
        zonal = _ZONE.match(zone)
        if zonal:  # a zonal cluster: its region is the zone without its letter
            out["region"], out["zone"] = zonal.group(1), zone
        elif zone:  # 2i2c's `zone` holds the region of a regional cluster
            out["region"] = zone
    elif provider == "aws":
        account = doc.data.get("account")
        if isinstance(account, str) and re.fullmatch(r"\d{12}", account):
            out["account_id"] = account
        if "region" in section:
            out["region"] = str(section["region"])
    elif provider == "azure" and "resource_group" in section:
        out["resource_group"] = str(section["resource_group"])
    for key in _SETTABLE[provider]:
        given = settings.get((cluster, provider, key))
        if given is not None:
            out[key] = given
    out = {k: out[k] for k in _SETTABLE[provider] if k in out}
    required = [k for k in _SETTABLE[provider] if k != "zone"]
    for key in required:
        if key not in out:
            example = _EXAMPLES.get(key, "VALUE")
            result.problems.append(
                doc.problem(
                    (provider,),
                    f"hubfleet needs {provider}.{key}, which this file does not have; "
                    f"import never invents it: pass --set {cluster}.{provider}.{key}={example}",
                )
            )
            # keep going: every missing field is listed at once
    mapped_from = {"project", "zone", "region", "resource_group"}
    for key in section:
        if key in mapped_from:
            continue
        why = _SECTION_KEYS.get(str(key), "not a setting hubfleet knows")
        result.dropped.append(doc.problem((provider, key), why.format(cluster=cluster)))
    return out


def _import_hub(
    result: ImportResult,
    doc: YamlDoc,
    cluster: str,
    i: int,
    item: Any,
    tiers: dict[tuple[str, str], Tier],
    values_out: dict[Path, tuple[str, Path]],
) -> dict[str, Any] | None:
    at = ("hubs", i)
    if not isinstance(item, Mapping):
        result.problems.append(doc.problem(at, "expected a mapping (name, domain, ...)"))
        return None
    ok = True
    name = item.get("name")
    if not isinstance(name, str) or not re.match(DNS_LABEL, name):
        result.problems.append(doc.problem((*at, "name"), f"{name!r} is not DNS-safe"))
        ok = False
    domain = item.get("domain")
    if not isinstance(domain, str) or not re.match(DOMAIN, domain):
        result.problems.append(doc.problem((*at, "domain"), f"{domain!r} is not a domain name"))
        ok = False
    chart = item.get("helm_chart")
    if chart not in ("basehub", "daskhub"):
        result.problems.append(
            doc.problem((*at, "helm_chart"), f"found {chart!r}; importable: basehub, daskhub")
        )
        ok = False
    files = item.get("helm_chart_values_files") or []
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        result.problems.append(
            doc.problem((*at, "helm_chart_values_files"), "expected a list of file names")
        )
        ok = False
    for key in item:
        if key not in ("name", "domain", "helm_chart", "helm_chart_values_files"):
            why = _HUB_KEYS.get(str(key), "not a hub key hubfleet knows")
            result.dropped.append(doc.problem((*at, key), why))
    if not ok:
        return None
    assert isinstance(name, str) and isinstance(chart, str)
    where = f"{_show(doc.path)}:{doc.line_of((*at, 'name'))}"
    given = tiers.get((cluster, name))
    tier = given or (Tier.staging if "staging" in name else Tier.prod)
    result.tiers.append(TierDecision(cluster, name, tier, given is None, where))

    values: list[str] = []
    secrets: list[Path] = []
    for j, file in enumerate(files):
        loc = (*at, "helm_chart_values_files", j)
        src = doc.path.parent / file
        if Path(file).name.startswith("enc-"):
            if not src.is_file():
                result.problems.append(doc.problem(loc, f"file {file!r} not found"))
                continue
            secrets.append(src)
            if not _is_sops(src):
                result.dropped.append(
                    doc.problem(
                        loc,
                        "named like a sops-encrypted file but has no sops metadata: not "
                        "copied (it may hold plaintext secrets); load it with the command "
                        "listed under secret layers",
                    )
                )
            continue
        rel = Path(os.path.normpath(file))
        if rel.is_absolute() or rel.parts[:1] == ("..",):
            rel = Path(rel.name)  # hubfleet values live in the cluster's directory
        out = Path("clusters") / cluster / rel
        if out in values_out:
            first_chart, first_src = values_out[out]
            if (first_chart, first_src) != (chart, src.resolve()):
                result.problems.append(
                    doc.problem(
                        loc,
                        f"{file!r} would be written twice (also from {_show(first_src)} for "
                        f"a {first_chart} hub); hubfleet cannot import it for both",
                    )
                )
                continue
        else:
            converted = _convert_values(result, src, chart, doc, loc)
            if converted is None:
                continue
            values_out[out] = (chart, src.resolve())
            result.files[out] = converted
        values.append(rel.as_posix())
    for k, src in enumerate(secrets):
        unnest = "--from daskhub" if chart == "daskhub" else "--from basehub"
        merge = " --merge" if k else ""
        load = f"hubfleet secret-values load {cluster} {name} {unnest}{merge}"
        if _is_sops(src):
            command = f"sops --decrypt {_show(src)} | {load}"
        else:
            command = f"{load} < {_show(src)}"
        note = "replaces the block" if not k else "merged into the block"
        result.secrets.append(SecretLayer(cluster, name, src, command, note))

    hub: dict[str, Any] = {"name": name, "domain": domain, "tier": tier.value, "kind": "standing"}
    if values:
        hub["values"] = values
    return hub


def _is_sops(path: Path) -> bool:
    """Whether a file carries sops metadata: its top-level `sops` key (YAML or JSON). Only
    that marker is looked for; the file is not parsed and nothing of it is kept."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(re.search(r'^sops:|^\s*"sops"\s*:', text, re.MULTILINE))


# --- values files ---------------------------------------------------------------------


def _convert_values(
    result: ImportResult, src: Path, chart: str, cluster_doc: YamlDoc, loc: tuple[Any, ...]
) -> OutFile | None:
    if not src.is_file():
        result.problems.append(
            cluster_doc.problem(
                loc,
                f"file {src.name!r} not found in {_show(src.parent)}; fix the name or add the file",
            )
        )
        return None
    doc, problems = read_yaml(src, empty_ok=True)
    if doc is None:
        result.problems += problems
        return None
    text = src.read_text(encoding="utf-8")
    if chart == "basehub":
        return _basehub_file(result, doc, text)
    return _daskhub_file(result, doc, text)


def _basehub_file(result: ImportResult, doc: YamlDoc, text: str) -> OutFile:
    data = doc.data
    drop = [k for k in data if k not in CHART_KEYS]
    for key in drop:
        result.dropped.append(doc.problem((key,), _TOP_KEYS.get(str(key), _NOT_IN_CHART)))
    _note_custom(result, doc, ("jupyterhub",))
    if not drop:
        return OutFile(text, f"copied from {_show(doc.path)}")
    kept = CommentedMap((k, v) for k, v in data.items() if k not in drop)
    body = _without_top_blocks(text, data, drop) or _dump_rt(kept)
    header = (
        f"# Imported by `hubfleet import` from {_show(doc.path)}, without its top-level "
        f"{', '.join(map(str, drop))} (not in hubfleet's hub chart; see the import's list).\n"
    )
    return OutFile(
        header + body, f"copied from {_show(doc.path)} without {', '.join(map(str, drop))}"
    )


def _daskhub_file(result: ImportResult, doc: YamlDoc, text: str) -> OutFile:
    data = doc.data
    base = data.get("basehub")
    for key in data:
        if key != "basehub":
            result.dropped.append(doc.problem((key,), _TOP_KEYS.get(str(key), _NOT_IN_CHART)))
    if base is not None and not isinstance(base, CommentedMap):
        result.dropped.append(doc.problem(("basehub",), "expected a mapping; nothing imported"))
        base = None
    for key in base or {}:
        if key != "jupyterhub":
            result.dropped.append(
                doc.problem(("basehub", key), _TOP_KEYS.get(str(key), _NOT_IN_CHART))
            )
    _note_custom(result, doc, ("basehub", "jupyterhub"))
    header = (
        f"# Imported by `hubfleet import` from {_show(doc.path)} (a daskhub values file): "
        "its basehub.jupyterhub block, un-nested to jupyterhub:. What else it set is in the "
        "import's list.\n"
    )
    if base is None or "jupyterhub" not in base:
        return OutFile(header + "{}\n", f"generated from {_show(doc.path)} (nothing to carry)")
    body = _unnested(text, base, "jupyterhub") or _dump_rt(
        CommentedMap([("jupyterhub", base["jupyterhub"])])
    )
    return OutFile(
        header + body, f"generated from {_show(doc.path)} (basehub.jupyterhub un-nested)"
    )


def _note_custom(result: ImportResult, doc: YamlDoc, at: tuple[str, ...]) -> None:
    node: Any = doc.data
    for key in at:
        if not isinstance(node, Mapping) or key not in node:
            return
        node = node[key]
    if isinstance(node, Mapping) and "custom" in node:
        result.dropped.append(doc.problem((*at, "custom"), _CUSTOM))


def _block_lines(lines: list[str], mapping: CommentedMap, key: Any, end: int) -> tuple[int, int]:
    """0-based [start, stop) of `key`'s block in `mapping` (block style), up to `end`: up to
    the next key's line, leaving out the blank and comment lines just before it."""
    starts = sorted(mapping.lc.key(k)[0] for k in mapping)
    start = mapping.lc.key(key)[0]
    following = [s for s in starts if s > start]
    stop = following[0] if following else end
    if following:
        while stop - 1 > start and (
            not lines[stop - 1].strip() or lines[stop - 1].lstrip().startswith("#")
        ):
            stop -= 1
    return start, stop


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _without_top_blocks(text: str, data: CommentedMap, drop: list[Any]) -> str | None:
    """`text` with the top-level blocks of `drop` cut out, every other line as written; None
    if the file is not a block mapping or the cut does not give the expected values."""
    if data.fa.flow_style():
        return None
    lines = text.splitlines(keepends=True)
    cut: set[int] = set()
    for key in drop:
        start, stop = _block_lines(lines, data, key, len(lines))
        cut.update(range(start, stop))
    body = "".join(line for n, line in enumerate(lines) if n not in cut)
    expected = {k: v for k, v in data.items() if k not in drop}
    return body if _same(body, expected) else None


def _unnested(text: str, parent: CommentedMap, key: str) -> str | None:
    """The block of `parent[key]` (lines as written) dedented to the top level; None if it
    cannot be cut out as lines (flow style) or the result is not the same values."""
    if parent.fa.flow_style():
        return None
    lines = text.splitlines(keepends=True)
    # The parent's block ends at the next top-level line (column 0, not a comment).
    parent_line = parent.lc.line
    end = len(lines)
    for n in range(parent_line + 1, len(lines)):
        if lines[n][:1] not in ("", " ", "\t", "\n", "#", "\r"):
            end = n
            break
    start, stop = _block_lines(lines, parent, key, end)
    indent = len(lines[start]) - len(lines[start].lstrip(" "))
    out = []
    for line in lines[start:stop]:
        lead = len(line) - len(line.lstrip(" "))
        out.append(line[min(lead, indent) :])
    body = "".join(out)
    if body and not body.endswith("\n"):
        body += "\n"
    return body if _same(body, {key: parent[key]}) else None


def _same(text: str, expected: Mapping[str, Any]) -> bool:

    try:
        loaded = YAML(typ="rt").load(text)
    except Exception:
        return False
    return bool(
        to_plain(loaded or CommentedMap(), (), {}) == to_plain(CommentedMap(expected), (), {})
    )


def _dump(data: Any) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    stream = StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()


def _dump_rt(data: Any) -> str:
    stream = StringIO()
    YAML(typ="rt").dump(data, stream)
    return stream.getvalue()


# --- writing ----------------------------------------------------------------------------


def write_fleet(result: ImportResult, out: Path, overwrite: bool = False) -> list[Path]:
    """Write the imported fleet to `out`, all or nothing: into a temporary directory
    beside it first, checked as `hubfleet validate` reads a fleet (registry and every
    values file parsed), then moved into place. `ImportFailed` if anything is wrong."""
    if result.problems:
        raise ImportFailed(result.problems)
    if out.exists() and not out.is_dir():
        raise HubfleetError(f"{_show(out)} exists and is not a directory; nothing was written")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HubfleetError(
            f"{_show(out)} exists and is not empty; nothing was written. Pass --overwrite to "
            "write the imported files into it (files of the same name are replaced, others "
            "are kept), or give a new directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        for rel, item in result.files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.text, encoding="utf-8")
        _check_written(staging, out)
        if out.is_dir():
            shutil.copytree(staging, out, dirs_exist_ok=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / rel for rel in result.files]


def _check_written(staging: Path, out: Path) -> None:
    """The imported fleet loads as `hubfleet validate` loads it; problems are reported at
    the path the file would have had."""
    from hubfleet.values import hub_layers

    def moved(problems: list[Problem]) -> list[Problem]:
        fixed = []
        for p in problems:
            file = p.file
            if isinstance(file, Path) and file.resolve().is_relative_to(staging.resolve()):
                file = out / file.resolve().relative_to(staging.resolve())
            fixed.append(Problem(file, p.line, p.field, p.message))
        return fixed

    try:
        fleet = load_fleet(staging)
        for cluster in fleet.clusters:
            for hub in cluster.hubs:
                read_values_files(fleet.hub_values_files(cluster.name, hub))
                hub_layers(fleet, cluster.name, hub)
    except (FleetInvalid, ValuesInvalid) as exc:
        raise ImportFailed(moved(exc.problems)) from None
