"""The right to replicate: a hub as a bundle its community can run without hubfleet.

`export_hub` writes a directory with the chart, the hub's fully merged values (every layer
hubfleet applies: chart, fleet, cluster, preset, hub), the secrets it needs as placeholders
with instructions, an install script of plain `helm` commands, and a README. No secret
value is ever written: secret keys are listed by name only.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet
from hubfleet.presets import _leaves
from hubfleet.values import (
    CHARTS_DIR,
    ValuesInvalid,
    hub_layers,
    merge_values,
    merged,
    validate_layers,
)

#: Chart keys that hold secrets whatever layer sets them, and how a community makes one.
CHART_SECRETS: dict[str, str] = {
    "hub.cookieSecret": "random hex: `openssl rand -hex 32`",
    "proxy.secretToken": "random hex: `openssl rand -hex 32`",
}
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


def export_hub(
    fleet: Fleet,
    cluster: str,
    hub: str,
    directory: Path,
    secret_keys: list[str] | None = None,
    charts_dir: Path | None = None,
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
    values = merged(layers)
    # hubfleet's own plumbing does not exist outside hubfleet: the ops service token Secret.
    values.setdefault("hub", {}).setdefault("opsToken", {})["existingSecret"] = ""
    secrets = dict(CHART_SECRETS)
    for key in secret_keys or []:
        secrets.setdefault(key, "the value your previous operator kept in a secret store")
    for key in secrets:
        _drop(values, key.split("."))

    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        chart = _copy_chart(version, directory / "chart", charts_dir)
        # The hub's own files first, so a problem names the file and line to fix; then the
        # bundle must install: check it against its own chart's schema now, not later
        # (placeholders are checked by install.sh instead: they are not valid secrets).
        validate_layers(layers, chart / "values.schema.json")
        validate_layers(
            [_layer("chart defaults", _read(chart / "values.yaml")), _layer("values.yaml", values)],
            chart / "values.schema.json",
        )
    except (ValuesInvalid, ExportFailed):
        _remove_written(directory, created)  # "nothing was written" holds
        raise
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
    (directory / "install.sh").write_text(_install_script(hub), encoding="utf-8")
    (directory / "install.sh").chmod(0o755)
    (directory / "README.md").write_text(
        _readme(fleet, cluster, hub, version, values, secrets), encoding="utf-8"
    )
    return Bundle(directory, hub, hub, version, tuple(sorted(secrets)))


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


def _layer(source: str, values: dict[str, Any]) -> Any:
    from hubfleet.values import Layer

    return Layer(source, values)


def _read(path: Path) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}


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


def _copy_chart(version: str, target: Path, charts_dir: Path | None) -> Path:
    """The chart at `version` as a plain directory (helm/hub, or an unpacked package)."""
    local = CHARTS_DIR / "hub"
    if _read(local / "Chart.yaml").get("version") == version:
        shutil.copytree(local, target, ignore=shutil.ignore_patterns("ci", "__pycache__"))
        return target
    import os

    packaged_dir = charts_dir or (
        Path(os.environ["HUBFLEET_CHARTS"]) if os.environ.get("HUBFLEET_CHARTS") else None
    )
    packaged = packaged_dir / f"hub-{version}.tgz" if packaged_dir else None
    if packaged is None or not packaged.is_file():
        raise ExportFailed(
            f"chart hub {version} not found (helm/hub is {_read(local / 'Chart.yaml')['version']}"
            "); set HUBFLEET_CHARTS to the directory holding hub-<version>.tgz. "
            "Nothing was written."
        )
    with tarfile.open(packaged) as tar:
        tar.extractall(target.parent / ".unpack", filter="data")
    (target.parent / ".unpack" / "hub").rename(target)
    (target.parent / ".unpack").rmdir()
    return target


def _install_script(release: str) -> str:
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
helm upgrade --install {release} ./chart \\
  --namespace "$NAMESPACE" --create-namespace \\
  -f values.yaml -f secrets.yaml \\
  --atomic --wait --timeout 10m
"""


def _readme(
    fleet: Fleet,
    cluster: str,
    hub: str,
    version: str,
    values: dict[str, Any],
    secrets: dict[str, str],
) -> str:
    spec = fleet.cluster(cluster).hub(hub)
    hosts = ", ".join((values.get("ingress") or {}).get("hosts") or []) or "(none)"
    secret_rows = "\n".join(f"| `{k}` | {how} |" for k, how in sorted(secrets.items()))
    settings = _leaves(values)
    return f"""# JupyterHub `{hub}`: run it yourself

This directory is everything needed to run the hub `{hub}` (fleet `{fleet.settings.name}`,
cluster `{cluster}`, use case `{spec.use_case.value if spec.use_case else "none"}`) on any
Kubernetes cluster, without hubfleet. It is yours: copy it, change it, keep it in git.

| file | what it is |
|---|---|
| `chart/` | the Helm chart (`hub` {version}), a JupyterHub with its proxy and idle culler |
| `values.yaml` | every setting of this hub, fully merged ({len(settings)} values) |
| `secrets.example.yaml` | the secrets it needs, as placeholders with instructions |
| `install.sh` | the plain `helm` command that installs or upgrades it |

## Install

You need `kubectl` access to a cluster (its current context) and helm 3.

1. `cp secrets.example.yaml secrets.yaml`, then replace every `{PLACEHOLDER}` value:

   | key | how to make it |
   |---|---|
{_indent(secret_rows)}

2. Point the hub at your own domain: in `values.yaml`, `ingress.hosts` (now {hosts}) and
   `ingress.tls`; the TLS Secret named there must exist (e.g. from cert-manager, with
   `ingress.annotations`), or set `ingress.enabled: false` and expose `proxy.service`.
3. `./install.sh [NAMESPACE]` (default namespace `{hub}`), which runs:

   ```
   helm upgrade --install {hub} ./chart --namespace {hub} --create-namespace \\
     -f values.yaml -f secrets.yaml --atomic --wait --timeout 10m
   ```

4. Check: `kubectl -n {hub} get pods` shows the hub and proxy Ready;
   `helm -n {hub} status {hub}` prints the chart's post-install checklist.

## What changed from the hosted hub

- hubfleet's operations token (`hub.opsToken`) is switched off: nothing outside hubfleet
  uses it.
- Secrets were never exported; new ones are made by you (step 1). Users log in again.
- Home directories are not in this bundle: ask your operator for a data export.
"""


def _indent(text: str) -> str:
    return "\n".join(f"   {line}" for line in text.splitlines())
