"""Helm-style values: deep merge in layering order (later layers win)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML


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
