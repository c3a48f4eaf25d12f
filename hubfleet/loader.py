"""Load `fleet/` into the typed model, or explain every problem as `file:line: field: message`.

Nothing downstream reads raw YAML: `load_fleet` returns a `Fleet` or raises `FleetInvalid`
carrying every problem found, each pointing at the line a user has to edit.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError

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
from hubfleet.terraform_inputs import check_against_module

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the registry, with where to fix it.

    `file` is a path, or a description of where a value came from that is not a file the
    user edits (a secret block); `line` is 0 when there is no line to point at.
    """

    file: Path | str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = _display(self.file) + (f":{self.line}" if self.line else "")
        return f"{where}: {self.field}: {self.message}"


class FleetInvalid(Exception):
    """The registry has problems; nothing may run on it."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _display(path: Path | str) -> str:
    if isinstance(path, str):
        return path
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- YAML with line numbers ------------------------------------------------------------


class _Constructor(RoundTripConstructor):
    """Keep timestamps as text so pydantic parses them and keeps their UTC offset."""


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", RoundTripConstructor.construct_yaml_str)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    return yaml


@dataclass
class _Doc:
    path: Path
    data: Any

    def line_of(self, loc: Loc) -> int:
        """1-based line of the deepest node along `loc` that exists in the file."""
        node = self.data
        line = _first_line(node)
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                try:
                    line = node.lc.key(part)[0] + 1
                except KeyError:  # filled in by the loader (a preset default): no line
                    pass
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        return line

    def problem(self, loc: Loc, message: str, anchor: Loc | None = None) -> Problem:
        return Problem(self.path, self.line_of(anchor or loc), _field(loc), message)


def _first_line(node: Any) -> int:
    if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
        return int(node.lc.line) + 1
    return 1


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(file)"


def read_yaml(path: Path, empty_ok: bool = False) -> tuple[_Doc | None, list[Problem]]:
    """Parse one YAML file whose top level must be a mapping, keeping line numbers.

    Every problem is a `Problem` pointing at the line to edit: a missing file, text that is
    not UTF-8, malformed YAML, a duplicate key, a top level that is not a mapping. With
    `empty_ok`, an empty file (or only comments) reads as an empty mapping.
    """
    if not path.is_file():
        return None, [Problem(path, 1, "(file)", "file not found; create it or fix the path")]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [
            Problem(
                path,
                text_line(path.read_bytes(), exc.start),
                "(file)",
                f"not UTF-8 text (byte {exc.start}); save the file as UTF-8",
            )
        ]
    try:
        data = _yaml().load(text)
    except DuplicateKeyError as exc:
        return None, [_duplicate_key(path, text, exc)]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = (exc.problem or exc.context or "syntax error").strip()
        col = f" at column {mark.column + 1}" if mark else ""
        return None, [
            Problem(
                path,
                line,
                "(yaml)",
                f"invalid YAML: {what}{col}; check indentation, ':' after keys and quoting",
            )
        ]
    if data is None and empty_ok:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        if data is None:
            found = "an empty file"
        elif isinstance(data, list):
            found = "a list"
        else:
            found = f"a {_type_name(data)} {_shown(data)}"
        return None, [
            Problem(
                path,
                _first_line(data),
                "(file)",
                f"expected a mapping of keys (key: value lines), found {found}",
            )
        ]
    return _Doc(path, data), []


def text_line(data: bytes, offset: int) -> int:
    """1-based line of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def _duplicate_key(path: Path, text: str, exc: DuplicateKeyError) -> Problem:
    """`file:line: a.b: duplicate key ...` at the second occurrence, with where its mapping
    starts (found again in a parse that allows duplicates, to name the full key)."""
    found = re.search(r'found duplicate key "(.*?)" with value', exc.problem or "")
    key = found.group(1) if found else "?"
    line = exc.problem_mark.line + 1 if exc.problem_mark else 1
    start = exc.context_mark.line if exc.context_mark else -1
    yaml = _yaml()
    yaml.allow_duplicate_keys = True
    prefix: Loc = ()
    try:
        prefix = _mapping_at(yaml.load(text), start, key) or ()
    except MarkedYAMLError:
        pass
    return Problem(
        path,
        line,
        _field((*prefix, key)),
        f"duplicate key: {key!r} is already set in the mapping that starts at line "
        f"{start + 1}; keep one of them (merge their contents)",
    )


def _mapping_at(node: Any, line: int, key: str, loc: Loc = ()) -> Loc | None:
    """Where the mapping that starts on (0-based) `line` and holds `key` is, if found."""
    if isinstance(node, CommentedMap):
        if node.lc.line == line and key in node:
            return loc
        children: Iterable[tuple[str | int, Any]] = node.items()
    elif isinstance(node, CommentedSeq):
        children = enumerate(node)
    else:
        return None
    for part, child in children:
        found = _mapping_at(child, line, key, (*loc, part if isinstance(part, int) else str(part)))
        if found is not None:
            return found
    return None


# --- pydantic errors, said plainly ------------------------------------------------------


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


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
        return f"found {_shown(value)}; allowed: {ctx.get('expected', '').replace(chr(39), '')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, found {_shown(value)}"
    if kind == "string_type":
        return f"expected a string, found {_type_name(value)} {_shown(value)}"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
        return f"{_shown(value)} is {hint}" if hint.startswith("not") else f"{value!r} {hint}"
    if kind == "timezone_aware":
        return f"{_shown(value)} has no timezone; add a UTC offset, e.g. 2026-12-01T09:00:00+01:00"
    if kind.startswith("datetime"):
        return f"{_shown(value)} is not a date-time; write e.g. 2026-12-01T09:00:00+01:00"
    if kind.startswith("timedelta"):
        return f"{_shown(value)} is not a duration; write e.g. PT2H, P1D or 02:00:00"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"found {_shown(value)}; {err['msg'].lower()}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, found {_type_name(value)} {_shown(value)}"
    if kind == "list_type":
        return f"expected a list, found {_type_name(value)} {_shown(value)}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s), found {len(value or [])}"
    if kind == "value_error":  # a model's own rule (e.g. hubfleet.auth): its message says it
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (found {_shown(value)})"


def _validate(doc: _Doc, model: type[BaseModel]) -> tuple[Any, list[Problem]]:
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
    docs: dict[str, _Doc] = {}
    hubs: list[tuple[str, _Doc, int, Hub]] = []  # (cluster, doc, index, hub) of valid hubs
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
                        f"{_display(docs[cluster.name].path)}); names must be unique",
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
    from hubfleet.presets import load_preset

    return load_preset(UseCase.event).event_defaults.get(key)


def _fill_event_defaults(doc: _Doc) -> dict[int, list[str]]:
    """Give event hubs with `use_case: event` the preset's `event_defaults` (data_policy,
    prewarm) where their own `event:` section leaves them out; the hub's settings win.

    Changes the parsed document before validation; returns, per hub index, the keys filled.
    """
    from hubfleet.presets import load_preset

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
    doc: _Doc, loc: Loc, files: Iterable[str], base: Path, root: Path
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
                    f"file {name!r} not found in {_display(base)}; create it or fix the name",
                )
            )
    return problems


def outside_fleet(base: Path, name: str, root: Path) -> str | None:
    """Why the values file `name` (relative to `base`) is not inside the fleet directory,
    or None if it is. A fleet change must not make the deploying machine read any file it
    can read (/etc/..., ~/.kube/config) and send it to a cluster as chart values."""
    fleet = f"the fleet directory {_display(root)}/"
    fix = f"copy the file into {_display(base)} and list its name relative to that directory"
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
    from hubfleet.values import CLUSTER_VALUES_FILE, SUPPORT_VALUES_FILE

    problems = []
    for name in (CLUSTER_VALUES_FILE, SUPPORT_VALUES_FILE):
        path = directory / name
        if not (path.is_symlink() or path.exists()):
            continue
        outside = outside_fleet(directory, name, root)
        if outside:
            problems.append(Problem(path, 1, "(file)", outside))
    return problems


def _check_cluster(doc: _Doc, cluster: Cluster, directory: Path) -> list[Problem]:
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


def _valid_hubs(doc: _Doc) -> list[tuple[int, Hub]]:
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
    doc: _Doc, hubs: list[tuple[int, Hub]], directory: Path, root: Path
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


def _check_provider(doc: _Doc, cluster: Cluster) -> list[Problem]:
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


def _check_domains(hubs: list[tuple[str, _Doc, int, Hub]]) -> list[Problem]:
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
