"""What each community uses and costs: the arithmetic of `hubfleet usage` and the ops
report's usage section. Pure (no Prefect, no I/O); `tasks/usage.py` gathers the inputs.

Where the numbers come from:

- **Samples of running servers.** A hub's REST API knows only the present, so every
  shallow health sweep (every 15 minutes) also asks each hub it reached, with the ops
  token it already holds, for its running servers (`GET /hub/api/users?state=active`:
  user, server name, `started`, the profile chosen) and keeps them in the run history
  (the `usage-samples` table artifact, one version per sweep). No extra schedule, no
  extra store: the history that is the audit log is the usage log.
- **Server-hours.** A server is one (hub, user, server name, `started`): the same
  `started` in several samples is the same server, even across samples a hub missed. It
  ran from `started` to at least the last sample that saw it, and that is what is
  counted, clipped to the window: never a minute that may not have happened. A server is
  under-counted by less than one sample interval (its stop is not seen until the next
  sweep), and one that starts and stops between two sweeps is not seen at all.
- **Active users**: users with a server counted in the window. **Peak concurrent
  users**: the most users with a server at one instant, over those same intervals (so a
  start between two sweeps counts from its `started`, not from the next sample).
- **Storage** is measured when the usage is computed: the size of the homes of a local
  hub; the requested size of a Kubernetes hub's PVCs (what a cloud bills), and their use
  where the cluster reports it. Its cost assumes that size over the whole window.
- **Cost** is an estimate from what servers request, not a bill (no cloud billing API):
  a server's share of a node is the larger of its CPU and memory request over the node's
  (`max(cpu/node_cpu, memory/node_memory)`, which is what decides how many fit on a
  node), times the node's hourly price, times its hours; plus storage GiB times the
  price per GiB-month times the window's share of a month (730 h). A server requests
  its hub's `singleuser.cpu` and `singleuser.memory` guarantee, else the limit (memory:
  z2jh's default guarantee of 1G when neither is set), or those of the profile it was
  started with (its `kubespawner_override`, from `hub.config.KubeSpawner.profile_list` or
  `singleuser.profileList`). Prices:
  `hubfleet.prices` (shipped defaults, overridable in fleet.yaml).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from hubfleet.errors import HubfleetError
from hubfleet.prices import HOURS_PER_MONTH, MachinePrice

FORMATS = ("table", "json", "csv")
#: z2jh's default memory guarantee of a user server (its values.yaml), when nothing sets one.
Z2JH_MEMORY_GUARANTEE = "1G"
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTE]i?)?B?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "E": 2**60}


class UsageInputError(HubfleetError):
    """A value usage arithmetic needs is malformed; the message names it and the fix."""


@dataclass(frozen=True)
class ServerSeen:
    """One running server in one sample."""

    user: str
    server: str  # "" for the default server
    started: datetime
    profile: str | None = None


@dataclass(frozen=True)
class Sample:
    """What one hub was running when a sweep asked it."""

    hub: str  # cluster/hub
    at: datetime
    servers: tuple[ServerSeen, ...] = ()


@dataclass(frozen=True)
class Resources:
    """What one user server requests."""

    cpu: float  # cores
    memory_gib: float
    source: str  # where it comes from, for the table


@dataclass(frozen=True)
class HubCosting:
    """What a hub's servers request and what its nodes and disks cost."""

    machine: str | None  # None: no price known (cost not estimated)
    price: MachinePrice | None
    storage_gib_month: float | None
    default: Resources
    profiles: Mapping[str, Resources] = field(default_factory=dict)

    def resources(self, profile: str | None) -> Resources:
        return self.profiles.get(profile or "", self.default)

    def hourly(self, profile: str | None) -> float | None:
        """The price of one server-hour of `profile` (None: no price)."""
        if self.price is None:
            return None
        return server_hourly(self.resources(profile), self.price)


@dataclass(frozen=True)
class Storage:
    """A hub's storage when measured: GiB requested (billed) and GiB used, where known."""

    requested_gib: float | None
    used_gib: float | None
    how: str  # e.g. "homes on disk", "3 PVCs (requested)", or why it was not measured


@dataclass
class Usage:
    """Everything `hubfleet usage` says, as plain data."""

    start: datetime
    end: datetime
    currency: str
    samples: int
    hubs: dict[str, dict[str, Any]] = field(default_factory=dict)
    use_cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    total: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- arithmetic ----------------------------------------------------------------------------


def gib(value: Any, where: str) -> float:
    """A KubeSpawner/Kubernetes byte size ('1G', '512M', '2Gi', 1073741824) in GiB.

    KubeSpawner reads K, M, G, T as powers of 1024, like Ki, Mi, Gi, Ti."""
    if isinstance(value, bool):
        raise UsageInputError(f"{where}: {value!r} is not a size; write e.g. 1G or 512M")
    if isinstance(value, int | float):
        return float(value) / 2**30
    match = _BYTES.match(str(value))
    if not match:
        raise UsageInputError(f"{where}: {value!r} is not a size; write e.g. 1G, 512M or 2Gi")
    return float(match[1]) * _UNIT[(match[2] or "")[:1].upper()] / 2**30


def cores(value: Any, where: str) -> float:
    """A CPU amount (0.5, 2, '500m') in cores."""
    text = str(value).strip()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000
        return float(text)
    except ValueError:
        raise UsageInputError(
            f"{where}: {value!r} is not a CPU amount; write e.g. 0.5, 2 or 500m"
        ) from None


def server_hourly(resources: Resources, node: MachinePrice) -> float:
    """One server-hour: the server's larger share of a node (CPU or memory) times the
    node's hourly price."""
    share = max(resources.cpu / node.cpu, resources.memory_gib / node.memory_gib)
    return share * node.hourly


def resources_from_values(values: Mapping[str, Any], hub: str, profiles: bool = True) -> HubCosting:
    """A hub's per-server requests from its merged chart values (`jupyterhub.singleuser`),
    default and per profile (`profiles=False`: none, as on local hubs, which do not apply
    them); price fields are filled in by `tasks.usage.hub_costing`.

    A profile's `kubespawner_override` replaces only the traits it names (as KubeSpawner
    does): a profile that sets only `mem_limit` keeps the hub's CPU guarantee."""
    singleuser = (values.get("jupyterhub") or {}).get("singleuser") or {}
    base = f"{hub}: values jupyterhub.singleuser"
    cpu = singleuser.get("cpu") or {}
    memory = singleuser.get("memory") or {}
    traits = {
        "cpu_guarantee": (cpu.get("guarantee"), f"{base}.cpu.guarantee"),
        "cpu_limit": (cpu.get("limit"), f"{base}.cpu.limit"),
        "mem_guarantee": (memory.get("guarantee"), f"{base}.memory.guarantee"),
        "mem_limit": (memory.get("limit"), f"{base}.memory.limit"),
    }
    default = _requests(traits)
    found: dict[str, Resources] = {}
    # z2jh turns singleuser.profileList into KubeSpawner.profile_list; hub.config (where
    # hubfleet's presets and customize_hub put it) is applied after, so it wins.
    spawner = (((values.get("jupyterhub") or {}).get("hub") or {}).get("config") or {}).get(
        "KubeSpawner"
    ) or {}
    listed, where = singleuser.get("profileList") or [], f"{base}.profileList"
    if spawner.get("profile_list"):
        listed = spawner["profile_list"]
        where = f"{hub}: values jupyterhub.hub.config.KubeSpawner.profile_list"
    for i, entry in enumerate(listed if profiles else []):
        if not isinstance(entry, Mapping):
            continue
        slug = str(entry.get("slug") or _slug(str(entry.get("display_name", i))))
        over = entry.get("kubespawner_override") or {}
        mine = dict(traits)
        for name in traits:
            if over.get(name) is not None:
                mine[name] = (over[name], f"{where}[{i}].kubespawner_override.{name}")
        found[slug] = _requests(mine)
        if entry.get("default"):
            found[""] = found[slug]  # a server started without choosing
    return HubCosting(None, None, None, default, found)


def _requests(traits: Mapping[str, tuple[Any, str]]) -> Resources:
    """Guarantee, else limit, for CPU and memory (memory: z2jh's default guarantee)."""
    parts = []
    cpu = 0.0
    for name, label in (("cpu_guarantee", "cpu guarantee"), ("cpu_limit", "cpu limit")):
        value, where = traits[name]
        if value is not None:
            cpu = cores(value, where)
            parts.append(label)
            break
    memory = None
    for name, label in (("mem_guarantee", "memory guarantee"), ("mem_limit", "memory limit")):
        value, where = traits[name]
        if value is not None:
            memory = gib(value, where)
            parts.append(label)
            break
    if memory is None:
        memory = gib(Z2JH_MEMORY_GUARANTEE, "z2jh default")
        parts.append("z2jh default memory guarantee")
    return Resources(cpu, memory, ", ".join(parts))


def _slug(name: str) -> str:
    # KubeSpawner's slug of a profile without one: its display name, lower-cased, dashed.
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class _Run:
    """One server's counted interval."""

    hub: str
    user: str
    profile: str | None
    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 3600


def server_runs(samples: Iterable[Sample], start: datetime, end: datetime) -> list[_Run]:
    """Each server's interval: from `started` to the last sample that saw it, clipped."""
    last_seen: dict[tuple[str, str, str, datetime], tuple[datetime, str | None]] = {}
    for sample in samples:
        for s in sample.servers:
            key = (sample.hub, s.user, s.server, s.started)
            before = last_seen.get(key)
            if before is None or sample.at > before[0]:
                last_seen[key] = (sample.at, s.profile)
    runs = []
    for (hub, user, _server, started), (last, profile) in last_seen.items():
        lo, hi = max(started, start), min(last, end)
        if hi > lo:
            runs.append(_Run(hub, user, profile, lo, hi))
    return sorted(runs, key=lambda r: (r.hub, r.start, r.user))


def peak_users(runs: Iterable[_Run]) -> tuple[int, datetime | None]:
    """The most distinct (hub, user)s with a server at one instant, and the first such
    instant. A user's overlapping servers count once; an end at the instant of another's
    start does not overlap it."""
    by_user: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for run in runs:
        by_user[(run.hub, run.user)].append((run.start, run.end))
    edges: list[tuple[datetime, int]] = []
    for spans in by_user.values():
        spans.sort()
        lo, hi = spans[0]
        for a, b in spans[1:]:
            if a <= hi:
                hi = max(hi, b)
            else:
                edges += [(lo, 1), (hi, -1)]
                lo, hi = a, b
        edges += [(lo, 1), (hi, -1)]
    best, at, now = 0, None, 0
    for when, step in sorted(edges, key=lambda e: (e[0], e[1])):  # ends (-1) first
        now += step
        if now > best:
            best, at = now, when
    return best, at


def build_usage(
    samples: list[Sample],
    *,
    start: datetime,
    end: datetime,
    hubs: Mapping[str, str],
    costing: Mapping[str, HubCosting],
    storage: Mapping[str, Storage] | None = None,
    currency: str = "USD",
    notes: Iterable[str] = (),
) -> Usage:
    """Usage and estimated cost per hub and use case over [start, end].

    `hubs`: cluster/hub -> use case of the hubs to report (others' samples are ignored);
    `costing`: each hub's requests and prices; `storage`: each hub's storage, measured."""
    samples = [s for s in samples if s.hub in hubs and start <= s.at <= end]
    runs = server_runs(samples, start, end)
    storage = storage or {}
    window_h = (end - start).total_seconds() / 3600
    usage = Usage(start, end, currency, len(samples), notes=list(notes))
    by_hub: dict[str, list[_Run]] = defaultdict(list)
    for run in runs:
        by_hub[run.hub].append(run)
    for hub, case in sorted(hubs.items()):
        mine = by_hub.get(hub, [])
        cost = costing.get(hub)
        seen = storage.get(hub, Storage(None, None, "not measured"))
        hours = sum(r.hours for r in mine)
        compute: float | None = None
        if cost is not None and cost.price is not None:
            compute = sum(r.hours * (cost.hourly(r.profile) or 0.0) for r in mine)
        billed = seen.requested_gib if seen.requested_gib is not None else seen.used_gib
        storage_cost: float | None = None
        if billed is not None and cost is not None and cost.storage_gib_month is not None:
            storage_cost = billed * cost.storage_gib_month * window_h / HOURS_PER_MONTH
        peak, peak_at = peak_users(mine)
        usage.hubs[hub] = {
            "use_case": case,
            "samples": sum(1 for s in samples if s.hub == hub),
            "active_users": len({r.user for r in mine}),
            "server_hours": round(hours, 4),
            "peak_users": peak,
            "peak_at": peak_at.isoformat(timespec="seconds") if peak_at else None,
            "storage_gib": _round(billed),
            "storage_used_gib": _round(seen.used_gib),
            "storage_how": seen.how,
            "machine": cost.machine if cost else None,
            "server_cpu": cost.default.cpu if cost else None,
            "server_memory_gib": _round(cost.default.memory_gib) if cost else None,
            "requests_from": cost.default.source if cost else None,
            "cost_per_server_hour": _round(cost.hourly(None)) if cost else None,
            "compute_cost": _round(compute, 2),
            "storage_cost": _round(storage_cost, 2),
            "cost": _sum_or_none(compute, storage_cost),
        }
    cases: dict[str, list[str]] = defaultdict(list)
    for hub, case in hubs.items():
        cases[case].append(hub)
    for case, members in sorted(cases.items()):
        usage.use_cases[case] = _aggregate(
            [usage.hubs[h] for h in members], [r for h in members for r in by_hub.get(h, [])]
        )
    usage.total = _aggregate(list(usage.hubs.values()), runs)
    return usage


def _aggregate(rows: list[dict[str, Any]], runs: list[_Run]) -> dict[str, Any]:
    peak, _ = peak_users(runs)
    return {
        "hubs": len(rows),
        "active_users": sum(r["active_users"] for r in rows),
        "server_hours": round(sum(r["server_hours"] for r in rows), 4),
        "peak_users": peak,
        "storage_gib": _round(_sum(r["storage_gib"] for r in rows)),
        "compute_cost": _round(_sum(r["compute_cost"] for r in rows), 2),
        "storage_cost": _round(_sum(r["storage_cost"] for r in rows), 2),
        "cost": _round(_sum(r["cost"] for r in rows), 2),
        # a total that leaves out hubs with no price says so
        "priced_hubs": sum(1 for r in rows if r["cost"] is not None),
    }


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _sum_or_none(*values: float | None) -> float | None:
    if all(v is None for v in values):
        return None
    return round(sum(v or 0.0 for v in values), 2)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --- rendering -----------------------------------------------------------------------------


def as_dict(usage: Usage) -> dict[str, Any]:
    data = asdict(usage)
    data["start"] = usage.start.isoformat(timespec="seconds")
    data["end"] = usage.end.isoformat(timespec="seconds")
    return data


#: The columns of the CSV (and the JSON rows' keys): one row per hub, use case and total.
CSV_COLUMNS = (
    "scope",
    "name",
    "use_case",
    "active_users",
    "server_hours",
    "peak_users",
    "storage_gib",
    "machine",
    "cost_per_server_hour",
    "compute_cost",
    "storage_cost",
    "cost",
    "currency",
)


def rows(usage: Usage) -> list[dict[str, Any]]:
    """Flat rows: each hub, each use case, then the fleet total."""
    out = []
    for hub, v in usage.hubs.items():
        out.append({"scope": "hub", "name": hub, **v})
    for case, v in usage.use_cases.items():
        out.append({"scope": "use_case", "name": case, "use_case": case, **v})
    out.append({"scope": "total", "name": "fleet", "use_case": "", **usage.total})
    for row in out:
        row["currency"] = usage.currency
    return out


def render(usage: Usage, fmt: str) -> str:
    """`json` or `csv` text (the table is drawn by the CLI with rich)."""
    if fmt == "json":
        return json.dumps(as_dict(usage), indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows(usage):
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
        return buffer.getvalue()
    raise UsageInputError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")


def money(value: float | None, currency: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {currency}"


def markdown(usage: Usage) -> str:
    """The ops report's usage section."""
    cur = usage.currency
    lines = [
        "## Usage and cost",
        "",
        f"From {usage.samples} samples of running servers (the shallow health sweeps); "
        "cost is an estimate from the resources requested and the price table "
        "(README: Usage and cost).",
        "",
        "| use case | hubs | active users | server hours | peak users | storage GiB | cost |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c} | {v['hubs']} | {v['active_users']} | {v['server_hours']:.2f} | "
            f"{v['peak_users']} | {_num(v['storage_gib'])} | {money(v['cost'], cur)} |"
            for c, v in usage.use_cases.items()
        ),
        "",
        "| hub | use case | active users | server hours | peak users | storage GiB | machine "
        "| per server-hour | compute | storage | cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {h} | {v['use_case']} | {v['active_users']} | {v['server_hours']:.2f} | "
            f"{v['peak_users']} | {_num(v['storage_gib'])} | {v['machine'] or '-'} | "
            f"{money(v['cost_per_server_hour'], cur, 4)} | {money(v['compute_cost'], cur)} | "
            f"{money(v['storage_cost'], cur)} | {money(v['cost'], cur)} |"
            for h, v in usage.hubs.items()
        ),
        "",
        *(f"Note: {n}" for n in usage.notes),
        "",
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cost_svg(usage: Usage, width: int = 640) -> str:
    """Estimated cost per hub as horizontal bars (compute and storage stacked), with the
    server-hours beside each; hubs without a price show their hours only."""
    hubs = list(usage.hubs.items())
    bar_h, pad, label_w = 18, 6, 180
    height = max(len(hubs), 1) * (bar_h + pad) + 30
    top = max((v["cost"] or 0.0 for _, v in hubs), default=0.0) or 1.0
    span = width - label_w - 140
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "role='img' aria-label='estimated cost per hub'>",
        f"<text x='{label_w}' y='12' font-size='11'><tspan fill='#1f77b4'>■ compute</tspan> "
        f"<tspan fill='#ff7f0e'>■ storage</tspan> ({html.escape(usage.currency)})</text>",
    ]
    for i, (hub, v) in enumerate(hubs):
        y = 20 + i * (bar_h + pad)
        compute = (v["compute_cost"] or 0.0) / top * span
        disk = (v["storage_cost"] or 0.0) / top * span
        parts.append(
            f"<text x='0' y='{y + 13}' font-size='12'>{html.escape(hub)}</text>"
            f"<rect x='{label_w}' y='{y}' width='{compute:.1f}' height='{bar_h}' fill='#1f77b4'>"
            f"<title>{html.escape(hub)}: compute {money(v['compute_cost'], usage.currency)}"
            "</title></rect>"
            f"<rect x='{label_w + compute:.1f}' y='{y}' width='{disk:.1f}' height='{bar_h}' "
            f"fill='#ff7f0e'><title>{html.escape(hub)}: storage "
            f"{money(v['storage_cost'], usage.currency)}</title></rect>"
            f"<text x='{label_w + compute + disk + 4:.1f}' y='{y + 13}' font-size='11'>"
            f"{html.escape(money(v['cost'], usage.currency))} · {v['server_hours']:.1f} h</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
