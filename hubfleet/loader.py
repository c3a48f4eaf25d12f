"""Load `fleet/` into the typed model, or explain every problem as `file:line: field: message`.

Nothing downstream reads raw YAML: `load_fleet` returns a `Fleet` or raises `FleetInvalid`
carrying every problem found, each pointing at the line a user has to edit.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from hubfleet.layers import CLUSTER_VALUES_FILE, SUPPORT_VALUES_FILE
from hubfleet.model import (
    PATTERN_HINTS,
    Cluster,
    Fleet,
    FleetSettings,
    Hub,
    HubKind,
    Provider,
    UseCase,
)
from hubfleet.presets import load_preset
from hubfleet.terraform_inputs import check_against_module
from hubfleet.yamlfile import (
    Loc,
    Problem,
    YamlDoc,
    display,
    read_yaml,
    shown,
    type_name,
)


class FleetInvalid(Exception):
    """The registry has problems; nothing may run on it."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- pydantic errors, said plainly ------------------------------------------------------


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found by following `loc` (for unknown-key messages)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if get_origin(current) is dict:  # a key of a mapping (e.g. a machine type's name)
            current = _unwrap(get_args(current)[1])
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, tuple, set):
            annotation = get_args(annotation)[0]
        else:
            return annotation


def _message(model: type[BaseModel], err: dict[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(model, loc[:-1]))
        return f"unknown key {loc[-1]!r}; allowed keys: {allowed}"
    if kind == "missing" and loc[-2:] == ("event", "data_policy"):
        return (
            "required key is missing; add data_policy: export (homes saved before teardown) "
            "or data_policy: delete, or set use_case: event on the hub (its preset defaults "
            f"it to {_event_preset_default('data_policy')!r})"
        )
    if kind == "missing":
        return "required key is missing; add it"
    if kind in ("enum", "literal_error"):
        return f"found {shown(value)}; allowed: {ctx.get('expected', '').replace(chr(39), '')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, found {shown(value)}"
    if kind == "string_type":
        return f"expected a string, found {type_name(value)} {shown(value)}"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
        return f"{shown(value)} is {hint}" if hint.startswith("not") else f"{value!r} {hint}"
    if kind == "timezone_aware":
        return f"{shown(value)} has no timezone; add a UTC offset, e.g. 2026-12-01T09:00:00+01:00"
    if kind.startswith("datetime"):
        return f"{shown(value)} is not a date-time; write e.g. 2026-12-01T09:00:00+01:00"
    if kind.startswith("timedelta"):
        return f"{shown(value)} is not a duration; write e.g. PT2H, P1D or 02:00:00"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"found {shown(value)}; {err['msg'].lower()}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, found {type_name(value)} {shown(value)}"
    if kind == "list_type":
        return f"expected a list, found {type_name(value)} {shown(value)}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s), found {len(value or [])}"
    if kind == "value_error":  # a model's own rule (e.g. hubfleet.auth): its message says it
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (found {shown(value)})"


def _validate(doc: YamlDoc, model: type[BaseModel]) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        problems = [
            doc.problem(tuple(e["loc"]), _message(model, dict(e)))
            for e in exc.errors(include_url=False)
        ]
        return None, problems


# --- the fleet --------------------------------------------------------------------------


def load_fleet(root: str | os.PathLike[str] = "fleet") -> Fleet:
    """Read and validate the whole registry under `root`; raise `FleetInvalid` if broken."""
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        raise FleetInvalid(
            [Problem(root, 1, "(file)", "fleet directory not found; pass the path to fleet/")]
        )

    settings: FleetSettings | None = None
    fleet_doc, found = read_yaml(root / "fleet.yaml")
    problems += found
    if fleet_doc:
        settings, found = _validate(fleet_doc, FleetSettings)
        problems += found
        if settings:
            problems += _check_files(fleet_doc, ("values",), settings.values, root, root)

    clusters: list[Cluster] = []
    docs: dict[str, YamlDoc] = {}
    hubs: list[tuple[str, YamlDoc, int, Hub]] = []  # (cluster, doc, index, hub) of valid hubs
    for path in sorted((root / "clusters").glob("*/cluster.yaml")):
        doc, found = read_yaml(path)
        problems += found
        if not doc:
            continue
        filled = _fill_event_defaults(doc)
        cluster, found = _validate(doc, Cluster)
        problems += found
        if cluster:
            for i, keys in filled.items():
                event = cluster.hubs[i].event
                if event is not None:
                    event._from_preset = frozenset(keys)
            problems += _check_cluster(doc, cluster, path.parent)
            problems += _check_cluster_values(path.parent, root)
            if cluster.name in docs:
                problems.append(
                    doc.problem(
                        ("name",),
                        f"duplicate cluster name {cluster.name!r} (also in "
                        f"{display(docs[cluster.name].path)}); names must be unique",
                    )
                )
            docs[cluster.name] = doc
            clusters.append(cluster)
            valid = list(enumerate(cluster.hubs))
        else:
            # Keep checking the hubs that are fine, so one typo does not hide other problems.
            valid = _valid_hubs(doc)
        problems += _check_hubs(doc, valid, path.parent, root)
        name = cluster.name if cluster else path.parent.name
        hubs += [(name, doc, i, hub) for i, hub in valid]

    problems += _check_domains(hubs)
    if problems or settings is None:
        raise FleetInvalid(sorted(problems, key=lambda p: (str(p.file), p.line)))
    return Fleet(root=root.resolve(), settings=settings, clusters=clusters)


def _event_preset_default(key: str) -> Any:

    return load_preset(UseCase.event).event_defaults.get(key)


def _fill_event_defaults(doc: YamlDoc) -> dict[int, list[str]]:
    """Give event hubs with `use_case: event` the preset's `event_defaults` (data_policy,
    prewarm) where their own `event:` section leaves them out; the hub's settings win.

    Changes the parsed document before validation; returns, per hub index, the keys filled.
    """

    items = doc.data.get("hubs")
    if not isinstance(items, list):
        return {}
    filled: dict[int, list[str]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("use_case") != UseCase.event.value:
            continue
        event = item.get("event")
        if item.get("kind") != HubKind.event.value or not isinstance(event, dict):
            continue
        for key, value in load_preset(UseCase.event).event_defaults.items():
            if key not in event:
                event[key] = copy.deepcopy(value)
                filled.setdefault(i, []).append(key)
    return filled


def _check_files(
    doc: YamlDoc, loc: Loc, files: Iterable[str], base: Path, root: Path
) -> list[Problem]:
    """Each listed values file exists and stays inside the fleet directory `root`."""
    problems = []
    for i, name in enumerate(files):
        outside = outside_fleet(base, name, root)
        if outside:
            problems.append(doc.problem((*loc, i), outside))
        elif not (base / name).is_file():
            problems.append(
                doc.problem(
                    (*loc, i),
                    f"file {name!r} not found in {display(base)}; create it or fix the name",
                )
            )
    return problems


def outside_fleet(base: Path, name: str, root: Path) -> str | None:
    """Why the values file `name` (relative to `base`) is not inside the fleet directory,
    or None if it is. A fleet change must not make the deploying machine read any file it
    can read (/etc/..., ~/.kube/config) and send it to a cluster as chart values."""
    fleet = f"the fleet directory {display(root)}/"
    fix = f"copy the file into {display(base)} and list its name relative to that directory"
    if Path(name).is_absolute() or name.startswith("~"):
        return f"{name!r} is an absolute path; values files must be inside {fleet}: {fix}"
    path = base / name
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        return f"{name!r} leaves {fleet}; values files must be inside it: {fix}"
    if not path.resolve().is_relative_to(root.resolve()):
        return (
            f"{name!r} is a symlink to {path.resolve()}, outside {fleet}; replace the link "
            "with a copy of the file"
        )
    return None


def _check_cluster_values(directory: Path, root: Path) -> list[Problem]:
    """The optional per-cluster values files (the hubs' and the support chart's) must not
    be links out of the fleet either."""

    problems = []
    for name in (CLUSTER_VALUES_FILE, SUPPORT_VALUES_FILE):
        path = directory / name
        if not (path.is_symlink() or path.exists()):
            continue
        outside = outside_fleet(directory, name, root)
        if outside:
            problems.append(Problem(path, 1, "(file)", outside))
    return problems


def _check_cluster(doc: YamlDoc, cluster: Cluster, directory: Path) -> list[Problem]:
    problems: list[Problem] = []
    if cluster.name != directory.name:
        problems.append(
            doc.problem(
                ("name",),
                f"found {cluster.name!r}, but the directory is {directory.name!r}; "
                "they must be equal",
            )
        )
    problems += _check_provider(doc, cluster)
    problems += [doc.problem(loc, msg) for loc, msg in check_against_module(cluster)]
    return problems


def _valid_hubs(doc: YamlDoc) -> list[tuple[int, Hub]]:
    items = doc.data.get("hubs")
    if not isinstance(items, list):
        return []
    valid = []
    for i, item in enumerate(items):
        try:
            valid.append((i, Hub.model_validate(item)))
        except ValidationError:
            pass  # already reported by the cluster's validation
    return valid


def _check_hubs(
    doc: YamlDoc, hubs: list[tuple[int, Hub]], directory: Path, root: Path
) -> list[Problem]:
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for i, hub in hubs:
        where = ("hubs", i)
        if hub.name in first_line:
            problems.append(
                doc.problem(
                    (*where, "name"),
                    f"duplicate hub name {hub.name!r} (first at line {first_line[hub.name]}); "
                    "hub names must be unique in a cluster",
                )
            )
        else:
            first_line[hub.name] = doc.line_of((*where, "name"))
        problems += _check_files(doc, (*where, "values"), hub.values, directory, root)
        if hub.kind is HubKind.event and hub.event is None:
            problems.append(
                doc.problem(
                    (*where, "event"),
                    "required when kind is 'event'; add start, end, attendees, "
                    "organizers and data_policy (data_policy and prewarm may be left out "
                    "with use_case: event: its preset supplies them)",
                )
            )
        if hub.kind is HubKind.standing and hub.event is not None:
            problems.append(
                doc.problem(
                    (*where, "event"),
                    "only allowed when kind is 'event'; remove it or set kind: event",
                )
            )
        if hub.event and hub.event.end <= hub.event.start:
            problems.append(
                doc.problem(
                    (*where, "event", "end"),
                    f"{hub.event.end.isoformat()} is not after start "
                    f"{hub.event.start.isoformat()}; the end must be later than the start",
                )
            )
    return problems


_REQUIRED_SECTION = {
    Provider.gcp: "project and region",
    Provider.aws: "account_id and region",
    Provider.azure: "subscription_id, resource_group and location",
    Provider.kubeconfig: "context",
}


def _check_provider(doc: YamlDoc, cluster: Cluster) -> list[Problem]:
    problems = []
    for provider in Provider:
        section = getattr(cluster, provider.value)
        if provider is cluster.provider:
            if section is None and provider in _REQUIRED_SECTION:
                problems.append(
                    doc.problem(
                        (provider.value,),
                        f"required when provider is {provider.value!r}; add a "
                        f"'{provider.value}:' section with {_REQUIRED_SECTION[provider]}",
                        anchor=("provider",),
                    )
                )
        elif section is not None:
            problems.append(
                doc.problem(
                    (provider.value,),
                    f"only allowed when provider is {provider.value!r} (this cluster's "
                    f"provider is {cluster.provider.value!r}); remove it",
                )
            )
    return problems


def _check_domains(hubs: list[tuple[str, YamlDoc, int, Hub]]) -> list[Problem]:
    problems = []
    seen: dict[str, str] = {}
    for cluster, doc, i, hub in hubs:
        if hub.domain in seen:
            problems.append(
                doc.problem(
                    ("hubs", i, "domain"),
                    f"domain {hub.domain!r} is already used by hub {seen[hub.domain]}; "
                    "each hub needs its own domain",
                )
            )
        else:
            seen[hub.domain] = f"{cluster}/{hub.name}"
    return problems
