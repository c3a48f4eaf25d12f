"""YAML files read with line numbers, and problems that point at the line to fix.

The bottom of the domain: `loader` (fleet.yaml, cluster.yaml), `layers` (values files),
`importer` and the login rule all read YAML through `read_yaml` and report `Problem`s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError

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
        where = display(self.file) + (f":{self.line}" if self.line else "")
        return f"{where}: {self.field}: {self.message}"


def display(path: Path | str) -> str:
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
class YamlDoc:
    path: Path
    data: Any

    def line_of(self, loc: Loc) -> int:
        """1-based line of the deepest node along `loc` that exists in the file."""
        node = self.data
        line = first_line(node)
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
        return Problem(self.path, self.line_of(anchor or loc), field_name(loc), message)


def first_line(node: Any) -> int:
    if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
        return int(node.lc.line) + 1
    return 1


def field_name(loc: Sequence[Any], empty: str = "(file)") -> str:
    """A key path as a user writes it: `hubs[2].name` (`empty` for the top level)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or empty


def read_yaml(path: Path, empty_ok: bool = False) -> tuple[YamlDoc | None, list[Problem]]:
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
            found = f"a {type_name(data)} {shown(data)}"
        return None, [
            Problem(
                path,
                first_line(data),
                "(file)",
                f"expected a mapping of keys (key: value lines), found {found}",
            )
        ]
    return YamlDoc(path, data), []


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
        field_name((*prefix, key)),
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


def type_name(value: Any) -> str:
    """A YAML/JSON value's type as a user reads it: string, number, boolean, list, ..."""
    if value is None:
        return "null"
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


def shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
