"""Helm-style values: deep merge in layering order (later layers win), the layers of a hub,
and a check against the chart's schema that names the file and line to fix.

Values files are read with line numbers (`hubfleet.loader.read_yaml`), so a malformed file,
a duplicate key or a key the chart does not have is reported as `file:line: key: message`
by `hubfleet validate`, `show`, `export-hub` and every flow alike.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

from hubfleet.errors import HubfleetError
from hubfleet.loader import Problem, read_yaml
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
    """Read values files and merge them in order; raise `ValuesInvalid` if one is broken."""
    return merge_values(*(layer.values for layer in read_values_files(paths)))


Lines = Mapping[tuple[str, ...], int]


def read_values_file(path: Path, source: str | None = None) -> Layer:
    """One values file as a layer, with the line of every key; `ValuesInvalid` (with
    `file:line` problems) if it is missing, malformed, has a duplicate key or its top
    level is not a mapping. An empty file is an empty layer."""
    values, lines, problems = _parsed(path, *_stamp(path))
    if problems:
        raise ValuesInvalid(problems)
    # A copy: callers may change a layer's values; the parsed file is shared by every hub.
    return Layer(source or _show(path), copy.deepcopy(values), path=path, origin=path, lines=lines)


def _stamp(path: Path) -> tuple[int, int]:
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
    return _plain(doc.data, (), lines), lines, ()


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


def _plain(node: Any, at: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> Any:
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
            out[name] = _plain(value, (*at, name), lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            lines[(*at, str(i))] = node.lc.item(i)[0] + 1
            items.append(_plain(value, (*at, str(i)), lines))
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


# --- layering for a hub -----------------------------------------------------------------

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
#: Support values hubfleet sets at every deploy_support, from the fleet: a file must not.
SUPPORT_MANAGED: dict[tuple[str, ...], str] = {
    ("hubNamespaces",): "hubfleet sets it to the cluster's hub namespaces (from cluster.yaml)",
    ("userPlaceholder", "replicas"): (
        "hubfleet sets it from the event hubs' pre-warm (`event.prewarm` / attendees) or "
        "`hubfleet deploy-support --placeholders N`"
    ),
}


def secret_values_block(cluster: str, hub: str) -> str:
    """Name of the optional Prefect `Secret` block with the hub's secret values (a dict)."""
    return f"hub-values-{cluster}-{hub}"


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
        checked = f" (checked against {_show(schema)})" if schema else ""
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


def hub_layers(
    fleet: Fleet,
    cluster: str,
    hub: Hub,
    secret_values: Mapping[str, Any] | None = None,
    chart_dir: Path | None = None,
    z2jh_defaults: bool = True,
) -> list[Layer]:
    """Every values layer of a hub, in the order helm applies them (later wins):

    chart defaults → what the fleet says about the hub (domain, ops Secret) → fleet
    defaults (`fleet.yaml: values`) → the cluster's `cluster.values.yaml` → the use case's
    preset (`use_case`, hubfleet.presets) → the hub's values files → secret values (from a
    block; written to a 0600 temp file only when helm runs).

    Every file is read with line numbers; `ValuesInvalid` lists every broken one. The chart
    defaults are z2jh's (fetched once per version, see hubfleet.charts) under the wrapper's;
    `z2jh_defaults=False` leaves z2jh's out (local hubs, which never fetch the chart).
    """
    chart = chart_dir or VALUES_CHART
    defaults = copy.deepcopy(_chart_defaults(chart / "values.yaml", *_stamp(chart / "values.yaml")))
    if z2jh_defaults:
        from hubfleet.charts import z2jh_defaults as upstream

        version = hub.chart_version or fleet.settings.chart_version
        upstream_defaults = upstream(version, fleet.settings.chart_repository)
        defaults = merge_values({Z2JH: copy.deepcopy(upstream_defaults)}, defaults)
    layers = [
        Layer(f"chart defaults ({chart / 'values.yaml'})", defaults, origin=chart / "values.yaml")
    ]
    layers.append(
        Layer(
            f"fleet: {cluster}/{hub.name}",
            fleet_values(hub),
            origin=fleet.cluster_dir(cluster) / "cluster.yaml",
        )
    )
    files = [fleet.root / f for f in fleet.settings.values]
    cluster_file = fleet.cluster_dir(cluster) / CLUSTER_VALUES_FILE
    if cluster_file.is_file():
        files.append(cluster_file)
    hub_files = [fleet.cluster_dir(cluster) / f for f in hub.values]
    read = read_values_files(files + hub_files)  # all or nothing: every broken file listed
    layers += read[: len(files)]
    if hub.use_case is not None:
        # The use case's preset: more specific than fleet and cluster defaults, but the
        # hub's own files (what its community asked for) still win.
        from hubfleet.presets import load_preset

        layers.append(load_preset(hub.use_case).layer())
    layers += read[len(files) :]
    if secret_values:
        block = secret_values_block(cluster, hub.name)
        layers.append(Layer(f"secret values (block {block})", dict(secret_values), secret=True))
    gateway = merged(layers).get("daskGateway") or {}
    if gateway.get("enabled"):
        # z2jh has no Dask Gateway: the wrapper runs it, and these values register it with
        # the hub. Under the hub's own files, which may still change any of it.
        layers.insert(2, Layer("hubfleet: dask gateway wiring", dask_gateway_values()))
    return layers


def fleet_values(hub: Hub) -> dict[str, Any]:
    """What the fleet says about a hub in z2jh values: its domain (ingress and TLS), its
    login (`auth:`, hubfleet.auth: no secret), and hubfleet's own users (hubfleet.localhub:
    the ops user's least-privilege role, the health user, the bootstrap user that mints the
    first ops token), who never log in."""
    from hubfleet.auth import kube_values
    from hubfleet.localhub import kube_hub_values

    return {
        Z2JH: merge_values(
            {
                "ingress": {
                    "hosts": [hub.domain],
                    "tls": [{"hosts": [hub.domain], "secretName": f"{hub.name}-tls"}],
                },
            },
            kube_hub_values(),
            # The hub's `auth:` (login): hub.config, and the client secret from a Secret.
            kube_values(hub.auth, hub.domain) if hub.auth else {},
        )
    }


def dask_gateway_values() -> dict[str, Any]:
    """z2jh values that register the wrapper's Dask Gateway with the hub: a service whose
    API token z2jh generates into the `hub` Secret (the gateway reads it there), a role to
    check users' tokens, the address user servers find it at, and their egress to it."""
    url, prefix = "http://dask-gateway:8000", "/services/dask-gateway"
    return {
        Z2JH: {
            "hub": {
                "services": {"dask-gateway": {"url": url, "display": False}},
                "loadRoles": {
                    "dask-gateway": {"services": ["dask-gateway"], "scopes": ["read:users"]}
                },
            },
            "singleuser": {
                "extraEnv": {
                    "DASK_GATEWAY__ADDRESS": url + prefix,
                    "DASK_GATEWAY__PROXY_ADDRESS": "gateway://dask-gateway:8786",
                    "DASK_GATEWAY__PUBLIC_ADDRESS": prefix,
                    "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
                },
                "networkPolicy": {
                    "egress": [
                        {
                            "to": [{"podSelector": {"matchLabels": {"component": "dask-gateway"}}}],
                            "ports": [{"port": 8000}, {"port": 8786}],
                        }
                    ]
                },
            },
        }
    }


@lru_cache(maxsize=16)
def _chart_defaults(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    return loaded


def merged(layers: Iterable[Layer]) -> dict[str, Any]:
    """The values helm will see: every layer deep-merged in order."""
    return merge_values(*(layer.values for layer in layers))


def hub_schema(fleet: Fleet, hub: Hub) -> Path:
    """The schema a hub's merged values are checked against: the wrapper's, with z2jh's
    own at `jupyterhub`, for the z2jh version the hub runs (a canary's may differ)."""
    from hubfleet.charts import hub_schema as schema_of

    return schema_of(
        hub.chart_version or fleet.settings.chart_version, fleet.settings.chart_repository
    )


def validate_layers(layers: list[Layer], schema_file: Path) -> None:
    """Check the merged values against the chart's schema before anything is applied;
    raise `ValuesInvalid` naming, for each problem, the file and line that set the key."""
    problems = schema_problems(layers, schema_file)
    if problems:
        raise ValuesInvalid(problems, schema_file)


def schema_problems(layers: list[Layer], schema_file: Path) -> list[Problem]:
    """Every way the merged values break the schema, as `file:line: key: message` at the
    last layer that set the key (a secret layer's values are never quoted). A chart
    without a schema accepts anything, as helm does."""
    if not schema_file.is_file():
        return []
    schema = _schema(schema_file)
    validator = _validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(merged(layers)), key=lambda e: list(map(str, e.path)))
    problems = []
    for error in errors:
        path = list(error.path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}))
            patterns = list(error.schema.get("patternProperties", {}))
            for key in sorted(error.instance):
                if key in allowed or any(re.search(p, key) for p in patterns):
                    continue
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    _problem(
                        layers,
                        [*path, key],
                        f"unknown key{hint}; allowed here: {', '.join(allowed) or 'none'}",
                    )
                )
            continue
        if error.validator == "required" and isinstance(error.instance, dict):
            for key in [k for k in error.validator_value if k not in error.instance]:
                problems.append(_problem(layers, path, f"required key {key!r} is missing; add it"))
            continue
        layer = _set_by(layers, path)
        shown = "(hidden: a secret value)" if layer.secret else _shown(error.instance)
        problems.append(_problem(layers, path, _schema_message(error, shown)))
    return problems


def _schema_message(error: Any, shown: str) -> str:
    kind, rule = error.validator, error.validator_value
    if kind == "type":
        wanted = " or ".join(rule) if isinstance(rule, list) else rule
        kind_of = _json_type(error.instance)
        found = shown if shown in ("a list", "a mapping") else f"{kind_of} {shown}"
        if error.instance is None:
            found = "an empty value (null); give it a value or remove the key"
        return f"expected {wanted}, found {found}"
    if kind == "enum":
        return f"found {shown}; allowed: {', '.join(map(repr, rule))}"
    if kind == "pattern":
        return f"{shown} does not match the pattern {rule!r}"
    if kind in _BOUNDS:
        return f"found {shown}; must be {_BOUNDS[kind]} {rule}"
    if kind == "minLength":
        return f"{shown} is too short; at least {rule} character(s)"
    return f"{shown} is invalid: {kind} {rule!r}"


_BOUNDS = {
    "minimum": "at least",
    "maximum": "at most",
    "exclusiveMinimum": "more than",
    "exclusiveMaximum": "less than",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "mapping"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _problem(layers: list[Layer], path: list[Any], message: str) -> Problem:
    layer = _set_by(layers, path)
    keys = tuple(str(p) for p in path)
    line = next(
        (layer.lines[keys[:d]] for d in range(len(keys), 0, -1) if keys[:d] in layer.lines),
        1 if layer.lines else 0,
    )
    return Problem(
        layer.origin if layer.origin and not layer.secret else layer.source,
        line,
        _dotted(path),
        message,
    )


def _dotted(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _set_by(layers: list[Layer], path: list[Any]) -> Layer:
    """The last layer that sets `path` (or its nearest parent): where a user must edit."""
    for depth in range(len(path), 0, -1):
        for layer in reversed(layers):
            if _sets(layer.values, path[:depth]):
                return layer
    return layers[0]


def _sets(values: Any, path: list[Any]) -> bool:
    node = values
    for part in path:
        if isinstance(node, list):
            return True  # lists are replaced whole: the layer that set it set every item
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


@cache
def _schema_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return loaded


def _schema(path: Path) -> dict[str, Any]:
    return _schema_cached(str(path), path.stat().st_mtime_ns)


def _validator_for(schema: Mapping[str, Any]) -> Any:
    """The jsonschema validator class for the schema's `$schema` (draft 7 if unset).

    jsonschema is imported here, not at the top: when `rfc3987_syntax` is installed (it
    comes with jupyter-events' `jsonschema[format-nongpl]`), importing jsonschema compiles
    its ~40 grammars, about 2 s of every CLI command (python-jsonschema/jsonschema#1428).
    hubfleet never checks `format`, so that optional import is skipped for jsonschema.
    """
    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # ImportError
        try:
            import jsonschema  # noqa: F401
        finally:
            del sys.modules["rfc3987_syntax"]
    from jsonschema import Draft7Validator
    from jsonschema.validators import validator_for

    return validator_for(schema, default=Draft7Validator)


def support_layers(fleet: Fleet, cluster: str) -> list[Layer]:
    """The support chart's values layers for `cluster`: its defaults, then the cluster's
    `support.values.yaml` if there is one (what hubfleet sets itself goes on top, at deploy).
    `ValuesInvalid` if the file is broken or breaks the chart's schema (`file:line: field:
    message`), or sets what hubfleet sets (`SUPPORT_MANAGED`)."""
    path = SUPPORT_CHART / "values.yaml"
    layers = [
        Layer(
            f"chart defaults ({path})",
            copy.deepcopy(_chart_defaults(path, *_stamp(path))),
            origin=path,
        )
    ]
    problems = support_problems(fleet, cluster)
    if problems:
        raise ValuesInvalid(problems, SUPPORT_CHART / "values.schema.json")
    file = fleet.cluster_dir(cluster) / SUPPORT_VALUES_FILE
    if file.is_file():
        layers.append(read_values_file(file))
    return layers


def support_problems(fleet: Fleet, cluster: str) -> list[Problem]:
    """What is wrong with the cluster's optional `support.values.yaml` ([] if fine or absent)."""
    from hubfleet.model import Provider

    file = fleet.cluster_dir(cluster) / SUPPORT_VALUES_FILE
    if not file.is_file():
        return []
    if fleet.cluster(cluster).provider is Provider.local:
        return [
            Problem(
                file,
                1,
                "(file)",
                f"cluster {cluster!r} is a local cluster: it has no support chart (hubs run "
                "as processes here); remove the file",
            )
        ]
    try:
        layer = read_values_file(file)
    except ValuesInvalid as exc:
        return exc.problems
    problems = []
    for keys, why in SUPPORT_MANAGED.items():
        if _sets(layer.values, list(keys)):
            node: Any = layer.values
            for part in keys:
                node = node[part]
            problems.append(
                _problem(
                    [layer],
                    list(keys),
                    f"found {_shown(node)}, but {why}; remove it from this file",
                )
            )
    path = SUPPORT_CHART / "values.yaml"
    defaults = Layer(f"chart defaults ({path})", _chart_defaults(path, *_stamp(path)), origin=path)
    return problems + schema_problems([defaults, layer], SUPPORT_CHART / "values.schema.json")


def check_fleet_values(
    fleet: Fleet,
    secret_values: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[Problem]:
    """Every hub's values, parsed and merged as a deploy would, checked against the schema
    of the chart it runs (`hub_schema`), and each cluster's `support.values.yaml` against
    the support chart's. A problem in a file several hubs share is listed once.
    `secret_values`: each (cluster, hub)'s secret layer, when known."""
    from hubfleet.auth import auth_problems

    problems: list[Problem] = auth_problems(fleet)  # a prod hub anyone could log in to
    for cluster in fleet.clusters:
        problems += support_problems(fleet, cluster.name)
        for hub in cluster.hubs:
            secret = (secret_values or {}).get((cluster.name, hub.name))
            try:
                layers = hub_layers(fleet, cluster.name, hub, secret)
                found = schema_problems(layers, hub_schema(fleet, hub))
            except ValuesInvalid as exc:
                found = exc.problems
            problems += [p for p in found if p not in problems]
    return problems


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
