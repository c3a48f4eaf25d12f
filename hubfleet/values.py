"""Helm-style values: deep merge in layering order (later layers win), the layers of a hub,
and a check against the chart's schema that names the file and line to fix.

Values files are read with line numbers (`hubfleet.layers`), so a malformed file, a duplicate
key or a key the chart does not have is reported as `file:line: key: message`
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubfleet import auth, yamlfile
from hubfleet.layers import (
    CLUSTER_VALUES_FILE,
    SUPPORT_CHART,
    SUPPORT_VALUES_FILE,
    VALUES_CHART,
    Z2JH,
    Layer,
    ValuesInvalid,
    file_stamp,
    merge_values,
    merged,
    read_values_file,
    read_values_files,
)
from hubfleet.localhub import kube_hub_values
from hubfleet.model import Fleet, Hub, Provider, Tier
from hubfleet.presets import layer_kind, load_preset
from hubfleet.yamlfile import Problem, field_name, read_yaml

# --- layering for a hub -----------------------------------------------------------------

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
    defaults = copy.deepcopy(
        _chart_defaults(chart / "values.yaml", *file_stamp(chart / "values.yaml"))
    )
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
            auth.kube_values(hub.auth, hub.domain) if hub.auth else {},
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
        shown = "(hidden: a secret value)" if layer.secret else yamlfile.shown(error.instance)
        problems.append(_problem(layers, path, _schema_message(error, shown)))
    return problems


def _schema_message(error: Any, shown: str) -> str:
    kind, rule = error.validator, error.validator_value
    if kind == "type":
        wanted = " or ".join(rule) if isinstance(rule, list) else rule
        kind_of = yamlfile.type_name(error.instance)
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
        field_name(path, empty="(top level)"),
        message,
    )


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
            copy.deepcopy(_chart_defaults(path, *file_stamp(path))),
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
                    f"found {yamlfile.shown(node)}, but {why}; remove it from this file",
                )
            )
    path = SUPPORT_CHART / "values.yaml"
    defaults = Layer(
        f"chart defaults ({path})", _chart_defaults(path, *file_stamp(path)), origin=path
    )
    return problems + schema_problems([defaults, layer], SUPPORT_CHART / "values.schema.json")


def check_fleet_values(
    fleet: Fleet,
    secret_values: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[Problem]:
    """Every hub's values, parsed and merged as a deploy would, checked against the schema
    of the chart it runs (`hub_schema`), and each cluster's `support.values.yaml` against
    the support chart's. A problem in a file several hubs share is listed once.
    `secret_values`: each (cluster, hub)'s secret layer, when known."""

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


# --- a local hub's values ------------------------------------------------------------


def local_layers(fleet: Fleet, cluster: str, hub: Hub) -> list[Layer]:
    """The values layers a local hub applies: fleet and cluster files, the preset, the
    hub's own files. Not the chart defaults nor what hubfleet sets for Kubernetes (ingress,
    the ops Secret)."""
    return [
        layer
        for layer in hub_layers(fleet, cluster, hub, z2jh_defaults=False)
        if layer_kind(layer) != "chart" and not layer.source.startswith(("fleet: ", "hubfleet: "))
    ]


def local_values(fleet: Fleet, cluster: str, hub: Hub) -> dict[str, Any]:
    """The merged values of a local hub (see `local_layers`); feed to hub_config_from_values.
    Their top level is checked against the wrapper chart's schema (z2jh values under
    `jupyterhub:`), so a file in another layout is an error naming it, not ignored."""
    layers = local_layers(fleet, cluster, hub)
    validate_layers(layers, VALUES_CHART / "values.schema.json")
    return merged(layers)


# --- the login rule: a prod hub on Kubernetes needs a login --------------------------------


def needs_auth(fleet: Fleet, cluster: str, hub: Hub) -> str | None:
    """Why `hub` may not be deployed as it is (a prod hub anyone could log in to), or None.

    The rule covers prod hubs on Kubernetes providers. A local hub listens on loopback only
    and lets nobody log in unless its values say so (the null authenticator), so there is
    no open door to close; the example fleet's local prod hubs (and `./dev demo`) keep
    running without `auth:`. An authenticator set in the hub's own values (e.g. from an
    imported basehub config) counts, unless it is the dummy one (z2jh's default), which
    takes any password."""
    if hub.tier is not Tier.prod or hub.auth is not None:
        return None
    if fleet.cluster(cluster).provider is Provider.local:
        return None
    try:
        values = local_values(fleet, cluster, hub)  # the files, without chart defaults
    except Exception:  # broken values are reported by the values check itself
        return None
    found = auth.authenticator_of(values)
    if found and found not in auth.OPEN_AUTHENTICATORS:
        return None
    what = f"its values set the {found!r} authenticator" if found else "it has no `auth:`"
    return (
        f"prod hub {cluster}/{hub.name} would let anyone log in ({what}, and z2jh's default "
        "takes any password); add an `auth:` section to the hub in cluster.yaml, e.g. "
        "`auth: {provider: github, client_id: <id>, allowed_organizations: [<org>], "
        "admin_users: [<you>]}` and store its client secret with `hubfleet oauth-client "
        f"set {cluster} {hub.name}` (see README, Login (OAuth)), or make it tier: staging"
    )


def auth_problems(fleet: Fleet) -> list[Problem]:
    """`file:line` problems for every prod hub that `needs_auth` refuses."""
    problems = []
    for cluster in fleet.clusters:
        for i, hub in enumerate(cluster.hubs):
            why = needs_auth(fleet, cluster.name, hub)
            if why is None:
                continue
            path = fleet.cluster_dir(cluster.name) / "cluster.yaml"
            doc, _ = read_yaml(path)
            line = doc.line_of(("hubs", i, "name")) if doc else 1
            problems.append(Problem(path, line, f"hubs[{i}].auth", why))
    return problems
