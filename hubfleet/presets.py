"""Use-case presets: sensible defaults per kind of community, and what it may change itself.

A hub with `use_case: learning | research | event` gets the preset's chart values as one
layer of `hubfleet.values.hub_layers` (above fleet-wide and cluster defaults, under the
hub's own values files). The preset also bounds community self-service (`customize_hub`):
the images a community may choose, and the profiles it may offer.

`explain` answers "where does this value come from?" for `hubfleet show`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from hubfleet.errors import HubfleetError
from hubfleet.layers import Layer, ValuesInvalid, leaves, read_values_file
from hubfleet.model import UseCase
from hubfleet.yamlfile import display

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class Profile:
    """A server size a community may offer its users (a KubeSpawner profile)."""

    slug: str
    display_name: str
    mem_guarantee: str
    mem_limit: str
    cpu_limit: float

    def as_kubespawner(self, default: bool = False) -> dict[str, Any]:
        """The entry of `KubeSpawner.profile_list` for this profile."""
        entry: dict[str, Any] = {
            "slug": self.slug,
            "display_name": self.display_name,
            "kubespawner_override": {
                "mem_guarantee": self.mem_guarantee,
                "mem_limit": self.mem_limit,
                "cpu_limit": self.cpu_limit,
            },
        }
        if default:
            entry["default"] = True
        return entry


@dataclass(frozen=True)
class Preset:
    """One use case's defaults (chart values) and self-service limits."""

    use_case: UseCase
    description: str
    values: dict[str, Any]
    images: tuple[str, ...]
    profiles: dict[str, Profile]
    event_defaults: dict[str, Any]
    path: Path
    lines: Mapping[tuple[str, ...], int] = field(default_factory=dict, compare=False)

    def layer(self) -> Layer:
        """The preset as a values layer (a temp file for helm: the preset file is not values);
        a schema problem in it names the preset file and line."""
        return Layer(
            f"preset: {self.use_case.value} ({display(self.path)})",
            self.values,
            origin=self.path,
            lines=self.lines,
        )


class PresetInvalid(HubfleetError):
    """A preset file is malformed (a bug in hubfleet's own data, not in the fleet)."""


@cache
def load_preset(use_case: UseCase | str) -> Preset:
    """The preset of a use case, read from `hubfleet/presets/<use_case>.yaml`."""
    case = UseCase(use_case)
    path = PRESETS_DIR / f"{case.value}.yaml"
    try:
        layer = read_values_file(path)
    except ValuesInvalid as exc:
        raise PresetInvalid(f"malformed preset:\n{exc}") from None
    data = layer.values
    lines = {key[1:]: line for key, line in layer.lines.items() if key[:1] == ("values",)}
    try:
        service = data.get("self_service") or {}
        profiles = {
            slug: Profile(
                slug=slug,
                display_name=str(p["display_name"]),
                mem_guarantee=str(p["mem_guarantee"]),
                mem_limit=str(p["mem_limit"]),
                cpu_limit=float(p["cpu_limit"]),
            )
            for slug, p in (service.get("profiles") or {}).items()
        }
        return Preset(
            use_case=case,
            description=str(data["description"]),
            values=dict(data.get("values") or {}),
            images=tuple(str(i) for i in service.get("images") or ()),
            profiles=profiles,
            event_defaults=dict(data.get("event_defaults") or {}),
            path=path,
            lines=lines,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PresetInvalid(f"{path}: malformed preset ({exc!r})") from None


def all_presets() -> list[Preset]:
    """Every use case's preset, in the order of `UseCase`."""
    return [load_preset(case) for case in UseCase]


# --- where each value comes from ---------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """One effective value (a leaf of the merged values) and the layer that set it."""

    key: str  # dotted path, e.g. singleuser.memory.limit
    value: Any
    source: str  # the layer's description (file, preset, ...)
    kind: str  # chart | preset | fleet | cluster | hub | secret
    overrode: tuple[str, ...]  # kinds of earlier layers that set the same key


def layer_kind(layer: Layer) -> str:
    """Which of chart, preset, fleet, cluster, hub or secret a layer is."""
    source = layer.source
    if layer.secret:
        return "secret"
    if source.startswith("chart defaults"):
        return "chart"
    if source.startswith("preset:"):
        return "preset"
    if source.startswith("fleet:"):
        return "fleet"
    if layer.path is not None and layer.path.name == "cluster.values.yaml":
        return "cluster"
    if layer.path is not None and layer.path.parent.parent.name == "clusters":
        return "hub"
    return "fleet"  # fleet.yaml `values` files


def explain(layers: list[Layer]) -> list[Origin]:
    """Each effective value with the last layer that set it (later layers win, as in helm).

    A secret layer's values are never returned: the key is shown with "(hidden)".
    """
    found: dict[tuple[str, ...], Origin] = {}
    for layer in layers:
        kind = layer_kind(layer)
        for path, value in leaves(layer.values).items():
            # A parent set as a scalar/list by a later layer replaces the children.
            for key in [k for k in found if k[: len(path)] == path and k != path]:
                del found[key]
            for depth in range(1, len(path)):
                found.pop(path[:depth], None)
            before = found.get(path)
            overrode = (*before.overrode, before.kind) if before else ()
            found[path] = Origin(
                key=".".join(path),
                value="(hidden)" if layer.secret else value,
                source=layer.source,
                kind=kind,
                overrode=overrode,
            )
    return [found[k] for k in sorted(found)]
