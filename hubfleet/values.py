"""Helm-style values: deep merge in layering order (later layers win), the layers of a hub,
and a check against the chart's schema that names the file to fix."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from ruamel.yaml import YAML

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet, Hub


def merge_values(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; a later layer's scalars and lists replace earlier ones."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = merge_values(value)
        else:
            target[key] = copy.deepcopy(value)


def load_values_files(paths: Iterable[Path]) -> dict[str, Any]:
    """Read values files (already checked to exist by the loader) and merge them in order."""
    yaml = YAML(typ="safe")
    layers = [yaml.load(path.read_text(encoding="utf-8")) or {} for path in paths]
    return merge_values(*layers)


# --- layering for a hub -----------------------------------------------------------------

#: Where the charts live; `HUBFLEET_CHARTS` may hold packaged versions (`hub-0.2.0.tgz`).
CHARTS_DIR = Path(__file__).resolve().parent.parent / "helm"
#: Optional per-cluster values file, applied after the fleet's and before the hub's own.
CLUSTER_VALUES_FILE = "cluster.values.yaml"
#: The Secret (in the hub's namespace) holding hubfleet's ops token; hubfleet creates it.
OPS_TOKEN_SECRET = "hubfleet-ops"


class ValuesInvalid(HubfleetError):
    """A hub's layered values break the chart's schema; nothing was applied."""


@dataclass(frozen=True)
class Layer:
    """One layer of values and where it came from (`secret` layers are never shown)."""

    source: str
    values: dict[str, Any]
    secret: bool = False
    path: Path | None = None  # the file helm is given, for file layers


def hub_layers(
    fleet: Fleet,
    cluster: str,
    hub: Hub,
    secret_values: Mapping[str, Any] | None = None,
    chart_dir: Path | None = None,
) -> list[Layer]:
    """Every values layer of a hub, in the order helm applies them (later wins):

    chart defaults → what the fleet says about the hub (domain, ops Secret) → fleet
    defaults (`fleet.yaml: values`) → the cluster's `cluster.values.yaml` → the use case's
    preset (`use_case`, hubfleet.presets) → the hub's values files → secret values (from a
    block; written to a 0600 temp file only when helm runs).
    """
    chart = chart_dir or CHARTS_DIR / "hub"
    yaml = YAML(typ="safe")

    def read(path: Path) -> dict[str, Any]:
        return yaml.load(path.read_text(encoding="utf-8")) or {}

    layers = [Layer(f"chart defaults ({chart / 'values.yaml'})", read(chart / "values.yaml"))]
    layers.append(
        Layer(
            f"fleet: {cluster}/{hub.name}",
            {
                "ingress": {
                    "hosts": [hub.domain],
                    "tls": [{"hosts": [hub.domain], "secretName": f"{hub.name}-tls"}],
                },
                "hub": {"opsToken": {"existingSecret": OPS_TOKEN_SECRET}},
            },
        )
    )
    files = [fleet.root / f for f in fleet.settings.values]
    cluster_file = fleet.cluster_dir(cluster) / CLUSTER_VALUES_FILE
    if cluster_file.is_file():
        files.append(cluster_file)
    layers += [Layer(_show(p), read(p), path=p) for p in files]
    if hub.use_case is not None:
        # The use case's preset: more specific than fleet and cluster defaults, but the
        # hub's own files (what its community asked for) still win.
        from hubfleet.presets import load_preset

        layers.append(load_preset(hub.use_case).layer())
    hub_files = [fleet.cluster_dir(cluster) / f for f in hub.values]
    layers += [Layer(_show(p), read(p), path=p) for p in hub_files]
    if secret_values:
        layers.append(Layer("secret values", dict(secret_values), secret=True))
    return layers


def merged(layers: Iterable[Layer]) -> dict[str, Any]:
    """The values helm will see: every layer deep-merged in order."""
    return merge_values(*(layer.values for layer in layers))


def validate_layers(layers: list[Layer], schema_file: Path) -> None:
    """Check the merged values against the chart's schema before anything is applied.

    Every problem names the key, the layer (file) that set it, and what is allowed; a
    secret layer's values are never quoted.
    """
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    values = merged(layers)
    problems = []
    for error in sorted(
        Draft7Validator(schema).iter_errors(values), key=lambda e: list(map(str, e.path))
    ):
        path = [str(p) for p in error.path]
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed)):
                where = _set_by(layers, [*path, key])
                problems.append(
                    f"{where.source}: {'.'.join([*path, key])}: unknown key; "
                    f"allowed here: {', '.join(allowed)}"
                )
            continue
        where = _set_by(layers, path)
        shown = "(hidden: a secret value)" if where.secret else repr(error.instance)
        problems.append(
            f"{where.source}: {'.'.join(path) or '(top level)'}: {shown} is invalid: "
            f"{error.validator} {error.validator_value!r}"
        )
    if problems:
        raise ValuesInvalid(
            "values do not match the chart's schema "
            f"({_show(schema_file)}):\n  "
            + "\n  ".join(problems)
            + "\nFix the file named on each line. Nothing was applied."
        )


def _set_by(layers: list[Layer], path: list[str]) -> Layer:
    """The last layer that sets `path` (or its nearest parent): where a user must edit."""
    for depth in range(len(path), -1, -1):
        for layer in reversed(layers):
            node: Any = layer.values
            for key in path[:depth]:
                node = node.get(key) if isinstance(node, Mapping) else None
            if node is not None and (depth > 0 or layer is layers[0]):
                return layer
    return layers[0]


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextmanager
def secret_values_file(values: Mapping[str, Any]) -> Iterator[Path]:
    """Write secret values to a 0600 temp file for helm; it is removed whatever happens."""
    fd, name = tempfile.mkstemp(prefix="hubfleet-secret-values-", suffix=".yaml")
    path = Path(name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            # JSON is YAML, and json.dumps never emits anchors or tags.
            json.dump(values, out)
        yield path
    finally:
        path.unlink(missing_ok=True)
