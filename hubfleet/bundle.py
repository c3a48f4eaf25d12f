"""The right to replicate: a hub as a bundle its community can run without hubfleet.

`export_hub` writes a directory with the hub's fully merged values (every layer hubfleet
applies: chart, fleet, cluster, preset, hub), a reference to the chart it runs (the
upstream Zero to JupyterHub chart at its version, or hubfleet's wrapper of it when the
hub has a Dask Gateway), the secrets it needs as placeholders with instructions, an
install script of plain `helm` commands, and a README. No secret value is ever written:
secret keys are listed by name only. z2jh generates the proxy token and cookie secret.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubfleet.charts import Z2JH_KEY, copy_wrapper, repository
from hubfleet.errors import HubfleetError
from hubfleet.layers import leaves, merge_values, merged
from hubfleet.model import Fleet
from hubfleet.values import hub_layers, hub_schema, validate_layers

#: The marker install.sh refuses to install with.
PLACEHOLDER = "REPLACE-ME"


class ExportFailed(HubfleetError):
    """The bundle could not be written; the message says why and what to do."""


@dataclass(frozen=True)
class Bundle:
    """What `export_hub` wrote."""

    directory: Path
    release: str
    namespace: str
    chart_version: str
    secret_keys: tuple[str, ...]
    wrapper: bool  # the hub needs hubfleet's wrapper chart (its Dask Gateway)


def export_hub(
    fleet: Fleet,
    cluster: str,
    hub: str,
    directory: Path,
    secret_keys: list[str] | None = None,
) -> Bundle:
    """Write the bundle of `cluster/hub` into `directory` (created; must be empty if it exists).

    secret_keys: dotted keys of the hub's secret values (from its `hub-values-<c>-<h>`
    block); only their names are used, as placeholders.
    """
    spec = fleet.cluster(cluster).hub(hub)
    if directory.exists() and any(directory.iterdir()):
        raise ExportFailed(
            f"{directory} is not empty; give a new or empty directory. Nothing was written."
        )
    version = spec.chart_version or fleet.settings.chart_version
    layers = hub_layers(fleet, cluster, spec)  # no secret layer: secrets never leave blocks
    # The hub's own files first, so a problem names the file and line to fix.
    validate_layers(layers, hub_schema(fleet, spec))
    values = merged(layers)
    _drop_hubfleet_plumbing(values)
    secrets = {
        key: "the value your previous operator kept in a secret store" for key in secret_keys or []
    }
    for key in secrets:
        _drop(values, key.split("."))
    wrapper = bool((values.get("daskGateway") or {}).get("enabled"))
    if not wrapper:  # plain z2jh: its own values, at the top level
        values = values.get(Z2JH_KEY) or {}
        secrets = {k.removeprefix(f"{Z2JH_KEY}."): how for k, how in secrets.items()}

    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if wrapper:
            copy_wrapper(directory / "chart", version, repository(fleet.settings.chart_repository))
    except OSError as exc:
        _remove_written(directory, created)  # "nothing was written" holds
        raise ExportFailed(f"could not write {directory}: {exc}. Nothing was written.") from None
    placeholders = _nest({key: f"{PLACEHOLDER}: {how}" for key, how in secrets.items()})
    _write_yaml(
        directory / "values.yaml",
        values,
        f"# The complete values of hub {hub!r} (cluster {cluster!r}) as hubfleet deployed it:\n"
        "# chart defaults, fleet, cluster, use-case preset and the hub's own values, merged.\n"
        "# Secrets are NOT here: see secrets.example.yaml.\n",
    )
    _write_yaml(
        directory / "secrets.example.yaml",
        placeholders,
        "# Copy to secrets.yaml and replace every REPLACE-ME value (instructions follow it).\n"
        "# Keep secrets.yaml out of git.\n",
    )
    repo = repository(fleet.settings.chart_repository)
    (directory / "install.sh").write_text(
        _install_script(hub, version, repo, wrapper), encoding="utf-8"
    )
    (directory / "install.sh").chmod(0o755)
    (directory / "README.md").write_text(
        _readme(fleet, cluster, hub, version, repo, values, secrets, wrapper), encoding="utf-8"
    )
    return Bundle(directory, hub, hub, version, tuple(sorted(secrets)), wrapper)


def _drop_hubfleet_plumbing(values: dict[str, Any]) -> None:
    """hubfleet's own users and roles (fleet_values) mean nothing outside hubfleet."""
    ours = fleet_values_keys()
    z2jh = values.get(Z2JH_KEY) or {}
    hub = z2jh.get("hub") or {}
    for section in ("loadRoles", "extraConfig"):
        for name in ours.get(section, ()):
            (hub.get(section) or {}).pop(name, None)
        if section in hub and not hub[section]:
            del hub[section]


def fleet_values_keys() -> dict[str, list[str]]:
    from hubfleet.localhub import kube_hub_values

    hub = kube_hub_values()["hub"]
    return {section: list(hub[section]) for section in ("loadRoles", "extraConfig")}


def _remove_written(directory: Path, created: bool) -> None:
    """Undo a failed export: the directory was new or empty before it."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _drop(values: dict[str, Any], path: list[str]) -> None:
    node: Any = values
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        out = merge_values(out, _nested(parts, value))
    return out


def _nested(parts: list[str], value: Any) -> dict[str, Any]:
    return {parts[0]: value} if len(parts) == 1 else {parts[0]: _nested(parts[1:], value)}


def _write_yaml(path: Path, data: dict[str, Any], header: str) -> None:
    yaml = YAML()
    yaml.default_flow_style = False
    # Round-trip through JSON: plain dicts/lists/scalars only, no Python tags.
    with path.open("w", encoding="utf-8") as out:
        out.write(header)
        yaml.dump(json.loads(json.dumps(data)), out)


def _install_script(release: str, version: str, repo: str, wrapper: bool) -> str:
    chart = "./chart" if wrapper else f"jupyterhub --repo {repo} --version {version}"
    build = "helm dependency build ./chart\n" if wrapper else ""
    return f"""#!/bin/sh
# Install (or upgrade) this hub on any Kubernetes cluster with plain helm 3.
# Usage: ./install.sh [NAMESPACE]   (kubectl's current context is the target cluster)
set -eu
cd "$(dirname "$0")"
NAMESPACE="${{1:-{release}}}"
if [ ! -f secrets.yaml ]; then
  echo "secrets.yaml is missing: copy secrets.example.yaml to secrets.yaml and fill it in" >&2
  exit 2
fi
if grep -q "{PLACEHOLDER}" secrets.yaml; then
  echo "secrets.yaml still has {PLACEHOLDER} values: replace each one (see its instructions)" >&2
  exit 2
fi
{build}helm upgrade --install {release} {chart} \\
  --namespace "$NAMESPACE" --create-namespace \\
  -f values.yaml -f secrets.yaml \\
  --atomic --wait --timeout 10m
"""


def _readme(
    fleet: Fleet,
    cluster: str,
    hub: str,
    version: str,
    repo: str,
    values: dict[str, Any],
    secrets: dict[str, str],
    wrapper: bool,
) -> str:
    spec = fleet.cluster(cluster).hub(hub)
    z2jh = values.get(Z2JH_KEY, {}) if wrapper else values
    prefix = f"{Z2JH_KEY}." if wrapper else ""
    hosts = ", ".join((z2jh.get("ingress") or {}).get("hosts") or []) or "(none)"
    secret_rows = "\n".join(f"| `{k}` | {how} |" for k, how in sorted(secrets.items()))
    secret_rows = secret_rows or "| (none) | this hub keeps no secret values of its own |"
    settings = leaves(values)
    chart = (
        f"`chart/`: hubfleet's wrapper (its Dask Gateway) of Zero to JupyterHub {version} "
        f"from {repo}"
        if wrapper
        else f"the upstream Zero to JupyterHub chart `jupyterhub` {version} from {repo} "
        "(not copied)"
    )
    return f"""# JupyterHub `{hub}`: run it yourself

This directory is everything needed to run the hub `{hub}` (fleet `{fleet.settings.name}`,
cluster `{cluster}`, use case `{spec.use_case.value if spec.use_case else "none"}`) on any
Kubernetes cluster, without hubfleet. It is yours: copy it, change it, keep it in git.

| file | what it is |
|---|---|
| chart | {chart} |
| `values.yaml` | every setting of this hub, fully merged ({len(settings)} values) |
| `secrets.example.yaml` | the secrets it needs, as placeholders with instructions |
| `install.sh` | the plain `helm` command that installs or upgrades it |

## Install

You need `kubectl` access to a cluster (its current context), helm 3, and access to
{repo}.

1. `cp secrets.example.yaml secrets.yaml`, then replace every `{PLACEHOLDER}` value:

   | key | how to make it |
   |---|---|
{_indent(secret_rows)}

   The proxy token and cookie secret are generated by the chart at the first install.
2. Point the hub at your own domain: in `values.yaml`, `{prefix}ingress.hosts` (now {hosts})
   and `{prefix}ingress.tls`; the TLS Secret named there must exist (e.g. from cert-manager),
   or set `{prefix}ingress.enabled: false` and expose `{prefix}proxy.service`.
3. `./install.sh [NAMESPACE]` (default namespace `{hub}`).
4. Check: `kubectl -n {hub} get pods` shows the hub and proxy Ready.

## What changed from the hosted hub

- hubfleet's own users and roles (`hubfleet-ops`, `hubfleet-health`, `hubfleet-bootstrap`)
  are left out: nothing outside hubfleet uses them.
- Secrets were never exported; new ones are made by you (step 1) or the chart. Users log
  in again.
- Home directories are not in this bundle: ask your operator for a data export.
"""


def _indent(text: str) -> str:
    return "\n".join(f"   {line}" for line in text.splitlines())
