"""Helm-style values layers: values files read with the line of every key, and their deep
merge in layering order (later layers win). Where the charts and the per-cluster values
files live.

`hubfleet.values` builds a hub's layers from these and checks them against the chart.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

from hubfleet.errors import HubfleetError
from hubfleet.yamlfile import Problem, display, read_yaml


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
    """Read values files and merge them in order; raise `ValuesInvalid` if one is broken."""
    return merge_values(*(layer.values for layer in read_values_files(paths)))


Lines = Mapping[tuple[str, ...], int]


def read_values_file(path: Path, source: str | None = None) -> Layer:
    """One values file as a layer, with the line of every key; `ValuesInvalid` (with
    `file:line` problems) if it is missing, malformed, has a duplicate key or its top
    level is not a mapping. An empty file is an empty layer."""
    values, lines, problems = _parsed(path, *file_stamp(path))
    if problems:
        raise ValuesInvalid(problems)
    # A copy: callers may change a layer's values; the parsed file is shared by every hub.
    return Layer(
        source or display(path), copy.deepcopy(values), path=path, origin=path, lines=lines
    )


def file_stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1024)
def _parsed(
    path: Path, mtime_ns: int, size: int
) -> tuple[dict[str, Any], Lines, tuple[Problem, ...]]:
    """A values file parsed once per version of it (validate reads the fleet's shared
    files for every hub; ruamel's round-trip parser is pure Python)."""
    doc, problems = read_yaml(path, empty_ok=True)
    if doc is None:
        return {}, {}, tuple(problems)
    lines: dict[tuple[str, ...], int] = {}
    return to_plain(doc.data, (), lines), lines, ()


def read_values_files(paths: Iterable[Path]) -> list[Layer]:
    """Several values files; every broken one is reported, not just the first."""
    layers, problems = [], []
    for path in paths:
        try:
            layers.append(read_values_file(path))
        except ValuesInvalid as exc:
            problems += exc.problems
    if problems:
        raise ValuesInvalid(problems)
    return layers


def to_plain(node: Any, at: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> Any:
    """Parsed YAML as plain dicts, lists and scalars (what helm sees: keys are strings),
    recording the 1-based line of each key and list item in `lines`."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            name = _key(key)
            try:
                lines[(*at, name)] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError):  # a key merged in with `<<:` has no line here
                pass
            out[name] = to_plain(value, (*at, name), lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            lines[(*at, str(i))] = node.lc.item(i)[0] + 1
            items.append(to_plain(value, (*at, str(i)), lines))
        return items
    if isinstance(node, TaggedScalar):
        return str(node.value)
    if isinstance(node, bool) or node is None:
        return node
    for kind in (int, float, str):  # ruamel's subclasses (ScalarFloat, ...) as plain types
        if isinstance(node, kind):
            return kind(node)
    return str(node)


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


#: Where the charts live (helm/hub is hubfleet's wrapper of Zero to JupyterHub, see
#: hubfleet/charts.py; helm/support is the per-cluster support chart).
CHARTS_DIR = Path(__file__).resolve().parent.parent / "helm"
#: The wrapper chart's sources: its values.yaml is the first layer of every hub.
VALUES_CHART = CHARTS_DIR / "hub"
#: Optional per-cluster values file, applied after the fleet's and before the hub's own.
CLUSTER_VALUES_FILE = "cluster.values.yaml"
#: z2jh's values sit under this key of a hub's values (as in 2i2c's basehub).
Z2JH = "jupyterhub"
#: The per-cluster support chart (priority classes, pre-warm placeholders, hub namespace
#: defaults), and its optional values file in the cluster's directory.
SUPPORT_CHART = CHARTS_DIR / "support"
SUPPORT_VALUES_FILE = "support.values.yaml"


class ValuesInvalid(HubfleetError):
    """A hub's values files are broken or their merged values break the chart's schema;
    nothing was applied. `problems` are the `file:line: key: message` lines that
    `hubfleet validate` prints (empty when helm itself refused the values)."""

    def __init__(self, problems: Sequence[Problem] | str, schema: Path | None = None):
        if isinstance(problems, str):
            self.problems: list[Problem] = []
            super().__init__(problems)
            return
        self.problems = list(problems)
        checked = f" (checked against {display(schema)})" if schema else ""
        super().__init__(
            "\n".join(str(p) for p in self.problems)
            + f"\nvalues are invalid: {len(self.problems)} problem(s){checked}; fix the file "
            "named on each line. Nothing was applied."
        )


@dataclass(frozen=True)
class Layer:
    """One layer of values and where it came from (`secret` layers are never shown)."""

    source: str
    values: dict[str, Any]
    secret: bool = False
    path: Path | None = None  # the file helm is given, for file layers
    origin: Path | None = None  # the file a user edits to change it (errors name it)
    lines: Lines = field(default_factory=dict, compare=False)  # key path -> line in origin


def merged(layers: Iterable[Layer]) -> dict[str, Any]:
    """The values helm will see: every layer deep-merged in order."""
    return merge_values(*(layer.values for layer in layers))


def leaves(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of nested mappings by its path; lists and empty mappings are leaves."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in values.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out
