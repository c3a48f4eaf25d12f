"""The fleet ops report: what the pilot learned, computed from run-history records alone.

Pure: `build_report` takes sweep rows (from health sweep artifacts) and run records (from
flow runs and their tags) and returns plain data; `render` turns it into markdown, HTML
(with inline SVG charts) or JSON. `flows/fleet_report.py` reads the history from Prefect.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hubfleet.errors import HubfleetError

FORMATS = ("md", "html", "json")
#: Run outcomes that needed a person to look (besides approvals and manual re-runs).
FAILED = {"FAILED", "CRASHED"}
#: What kind of operation each `op:` tag is, for the report's summary.
KINDS = {
    "deploy_hub": "deploys",
    "deploy_fleet": "deploys",
    "customize_hub": "deploys",
    "rotate_credentials": "rotations",
    "create_event_hub": "event lifecycles",
    "extend_event_hub": "event lifecycles",
    "remind_event_organizers": "event lifecycles",
    "expire_event_hub": "event lifecycles",
    "reap_expired_event_hubs": "event lifecycles",
    "sync_event_schedules": "event lifecycles",
    "check_hub_health": "health checks",
    "check_fleet_health": "health checks",
    "teardown_hub": "teardowns",
    "provision_cluster": "clusters",
    "destroy_cluster": "clusters",
}


def kind_of(op: str) -> str:
    """deploys, rotations, event lifecycles, health checks, ... or other."""
    return KINDS.get(op, "other")


class ReportInputError(HubfleetError):
    """A `hubfleet report` option is malformed; the message names it and the fix."""


@dataclass(frozen=True)
class SweepRow:
    """One hub's verdict in one health sweep."""

    hub: str  # cluster/hub
    at: datetime
    verdict: str  # healthy | degraded | down
    reason: str = ""


@dataclass(frozen=True)
class RunRecord:
    """One flow run as the history has it (tags `op:`, `hub:`, `operator:`)."""

    op: str
    hub: str | None
    operator: str
    state: str  # Prefect StateType: COMPLETED, FAILED, PAUSED, ...
    start: datetime
    end: datetime | None = None
    paused: bool = False  # waited for a person (approval)
    run_count: int = 1
    # The op of the run that started this one as a subflow, if any. A subflow with its
    # parent's op (a rotation's per-credential runs) is part of that operation, not another.
    parent_op: str | None = None

    @property
    def part_of_parent(self) -> bool:
        return self.parent_op == self.op


@dataclass
class Incident:
    """A window in which a hub was not healthy in consecutive sweeps."""

    hub: str
    start: datetime
    end: datetime | None  # None: still open at the end of the history
    cause: str
    sweeps: int = 0

    @property
    def duration(self) -> timedelta | None:
        return self.end - self.start if self.end else None


@dataclass
class Report:
    """Everything the report says, as plain data."""

    start: datetime
    end: datetime
    hubs: dict[str, dict[str, Any]] = field(default_factory=dict)
    use_cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    incidents: list[Incident] = field(default_factory=list)
    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    # deploys / rotations / event lifecycles / ...: outcome -> count
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    needed_human: list[dict[str, Any]] = field(default_factory=list)
    mttr_minutes: float | None = None
    availability_series: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    ops_per_week: dict[str, int] = field(default_factory=dict)
    # What each hub used and cost (hubfleet.usage.Usage), when it was computed.
    usage: Any = None


def incidents_from(rows: list[SweepRow]) -> list[Incident]:
    """Unhealthy windows per hub: from the first non-healthy sweep to the first healthy one
    after it (so the precision is the sweep interval)."""
    out: list[Incident] = []
    by_hub: dict[str, list[SweepRow]] = defaultdict(list)
    for row in rows:
        by_hub[row.hub].append(row)
    for hub, seen in sorted(by_hub.items()):
        open_: Incident | None = None
        for row in sorted(seen, key=lambda r: r.at):
            if row.verdict != "healthy":
                if open_ is None:
                    open_ = Incident(hub, row.at, None, row.reason or row.verdict)
                open_.sweeps += 1
            elif open_ is not None:
                open_.end = row.at
                out.append(open_)
                open_ = None
        if open_ is not None:
            out.append(open_)
    return sorted(out, key=lambda i: (i.start, i.hub))


def build_report(
    sweeps: list[SweepRow],
    runs: list[RunRecord],
    *,
    start: datetime,
    end: datetime | None = None,
    use_cases: dict[str, str] | None = None,
) -> Report:
    """The report for [start, end] (end: the last record, or now if there is none)."""
    sweeps = [s for s in sweeps if s.at >= start and (end is None or s.at <= end)]
    runs = [r for r in runs if r.start >= start and (end is None or r.start <= end)]
    stamps = [s.at for s in sweeps] + [r.start for r in runs]
    # One operation, one count: a rotation's per-credential subflows are part of it.
    runs = [r for r in runs if not r.part_of_parent]
    report = Report(start=start, end=end or (max(stamps) if stamps else start))
    cases = use_cases or {}

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    daily: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for row in sweeps:
        healthy = int(row.verdict == "healthy")
        counts[row.hub][0] += healthy
        counts[row.hub][1] += 1
        bucket = daily[row.hub][row.at.date().isoformat()]
        bucket[0] += healthy
        bucket[1] += 1
    report.incidents = incidents_from(sweeps)
    closed = [i.duration for i in report.incidents if i.duration is not None]
    if closed:
        report.mttr_minutes = round(sum(d.total_seconds() for d in closed) / len(closed) / 60, 2)

    ops_by_hub: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    outcomes_by_hub: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run in runs:
        outcome = run.state.lower()
        report.operations.setdefault(run.op, defaultdict(int))[outcome] += 1
        kinds[kind_of(run.op)][outcome] += 1
        if run.hub:
            ops_by_hub[run.hub][run.op] += 1
            outcomes_by_hub[run.hub][run.op][outcome] += 1
        week = f"{run.start.isocalendar().year}-W{run.start.isocalendar().week:02d}"
        report.ops_per_week[week] = report.ops_per_week.get(week, 0) + 1
    report.needed_human = _needed_human(runs)

    for hub in sorted(set(counts) | set(ops_by_hub)):
        ok, total = counts.get(hub, [0, 0])
        hub_incidents = [i for i in report.incidents if i.hub == hub]
        report.hubs[hub] = {
            "use_case": cases.get(hub, "none"),
            "availability": round(ok / total, 4) if total else None,
            "sweeps": total,
            "incidents": len(hub_incidents),
            "downtime_minutes": round(
                sum(i.duration.total_seconds() for i in hub_incidents if i.duration) / 60, 2
            ),
            "operations": dict(ops_by_hub.get(hub, {})),
            "outcomes": {op: dict(v) for op, v in sorted(outcomes_by_hub.get(hub, {}).items())},
        }
        report.availability_series[hub] = [
            (day, round(b[0] / b[1], 4)) for day, b in sorted(daily[hub].items())
        ]
    by_case: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    case_ops: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for hub, data in report.hubs.items():
        ok, total = counts.get(hub, [0, 0])
        agg = by_case[data["use_case"]]
        agg[0] += ok
        agg[1] += total
        agg[2] += data["incidents"]
        agg[3] += 1
        for op, outcomes in data["outcomes"].items():
            for outcome, n in outcomes.items():
                case_ops[data["use_case"]][op][outcome] += n
    report.use_cases = {
        case: {
            "hubs": a[3],
            "availability": round(a[0] / a[1], 4) if a[1] else None,
            "incidents": a[2],
            "operations": {op: dict(v) for op, v in sorted(case_ops[case].items())},
        }
        for case, a in sorted(by_case.items())
    }
    report.kinds = {k: dict(v) for k, v in sorted(kinds.items())}
    report.operations = {op: dict(v) for op, v in sorted(report.operations.items())}
    return report


def _needed_human(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """Runs a person had to act on: approvals (paused), failures, and manual re-runs (the
    same operation on the same target started by a person after it failed)."""
    out = []
    last_failed: dict[tuple[str, str | None], RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start):
        key = (run.op, run.hub)
        why = []
        if run.paused:
            why.append("approval")
        if run.state in FAILED:
            why.append("failed")
        if run.run_count > 1:
            why.append(f"retried ({run.run_count} attempts)")
        if key in last_failed and run.operator not in ("schedule", "unknown(ui/api)"):
            why.append("manual re-run after a failure")
        if why:
            out.append(
                {
                    "op": run.op,
                    "hub": run.hub or "-",
                    "operator": run.operator,
                    "state": run.state.lower(),
                    "start": run.start.isoformat(timespec="seconds"),
                    "why": ", ".join(why),
                }
            )
        if run.state in FAILED:
            last_failed[key] = run
        elif run.state == "COMPLETED":
            last_failed.pop(key, None)
    return out


# --- rendering ---------------------------------------------------------------------------


def as_dict(report: Report) -> dict[str, Any]:
    """JSON-able data of the report."""
    data = asdict(report)
    data["start"] = report.start.isoformat(timespec="seconds")
    data["end"] = report.end.isoformat(timespec="seconds")
    data["incidents"] = [
        {
            "hub": i.hub,
            "start": i.start.isoformat(timespec="seconds"),
            "end": i.end.isoformat(timespec="seconds") if i.end else None,
            "minutes": round(i.duration.total_seconds() / 60, 2) if i.duration else None,
            "cause": i.cause,
            "sweeps": i.sweeps,
        }
        for i in report.incidents
    ]
    if report.usage is not None:
        from hubfleet.usage import as_dict as usage_dict

        data["usage"] = usage_dict(report.usage)
    return data


def render(report: Report, fmt: str) -> str:
    """The report as `md`, `html` (with inline SVG charts) or `json`."""
    if fmt == "json":
        return json.dumps(as_dict(report), indent=2, default=str)
    if fmt == "md":
        return markdown(report)
    if fmt == "html":
        return _html(report)
    raise ReportInputError(f"format {fmt!r}: allowed: {', '.join(FORMATS)}")


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def markdown(report: Report) -> str:
    """The report as markdown (also the Prefect artifact)."""
    d = as_dict(report)
    lines = [
        f"# Fleet ops report {d['start']} → {d['end']}",
        "",
        "Mean time from failure to recovery: "
        + (f"{report.mttr_minutes} min" if report.mttr_minutes is not None else "no recovery"),
        "",
        "## Availability per use case",
        "",
        "| use case | hubs | availability | incidents |",
        "|---|---|---|---|",
        *(
            f"| {c} | {v['hubs']} | {_pct(v['availability'])} | {v['incidents']} |"
            for c, v in report.use_cases.items()
        ),
        "",
        "## Per hub",
        "",
        "| hub | use case | availability | sweeps | incidents | downtime min | operations |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {h} | {v['use_case']} | {_pct(v['availability'])} | {v['sweeps']} | "
            f"{v['incidents']} | {v['downtime_minutes']} | "
            + ", ".join(f"{op} {n}" for op, n in sorted(v["operations"].items()))
            + " |"
            for h, v in report.hubs.items()
        ),
        "",
        "## Incidents",
        "",
        "| hub | start | end | minutes | cause |",
        "|---|---|---|---|---|",
        *(
            f"| {i['hub']} | {i['start']} | {i['end'] or 'open'} | {i['minutes'] or '-'} | "
            f"{i['cause']} |"
            for i in d["incidents"]
        ),
        "",
        "## Operations and outcomes",
        "",
        "| kind | outcomes |",
        "|---|---|",
        *(f"| {k} | {_outcomes(v)} |" for k, v in report.kinds.items()),
        "",
        "| operation | outcomes |",
        "|---|---|",
        *(f"| {op} | {_outcomes(v)} |" for op, v in report.operations.items()),
        "",
        "## Operations per use case",
        "",
        "| use case | operation | outcomes |",
        "|---|---|---|",
        *(
            f"| {case} | {op} | {_outcomes(v)} |"
            for case, data in report.use_cases.items()
            for op, v in data["operations"].items()
        ),
        "",
        "## Runs that needed a human",
        "",
        "| start | operation | hub | operator | state | why |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['start']} | {r['op']} | {r['hub']} | {r['operator']} | {r['state']} | "
            f"{r['why']} |"
            for r in report.needed_human
        ),
        "",
    ]
    if report.usage is not None:
        from hubfleet.usage import markdown as usage_markdown

        lines.append(usage_markdown(report.usage))
    return "\n".join(lines)


def availability_svg(series: dict[str, list[tuple[str, float]]], width: int = 640) -> str:
    """Availability per hub over time (one line per hub, days on x, 0-100% on y)."""
    days = sorted({day for points in series.values() for day, _ in points})
    height, pad = 220, 40
    if not days:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'></svg>"
    x_of = {d: pad + (i * (width - 2 * pad) / max(len(days) - 1, 1)) for i, d in enumerate(days)}
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height + 20 * len(series)}' role='img' "
        "aria-label='availability per hub over time'>",
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' "
        "stroke='#999'/>",
        f"<text x='2' y='{pad}' font-size='10'>100%</text>",
        f"<text x='2' y='{height - pad}' font-size='10'>0%</text>",
    ]
    for i, (hub, points) in enumerate(sorted(series.items())):
        colour = colours[i % len(colours)]
        coords = " ".join(
            f"{x_of[day]:.1f},{(height - pad) - value * (height - 2 * pad):.1f}"
            for day, value in points
        )
        parts.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{coords}'/>"
        )
        parts.append(
            f"<text x='{pad}' y='{height + 12 + 20 * i}' fill='{colour}' font-size='12'>"
            f"{html.escape(hub)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def ops_svg(per_week: dict[str, int], width: int = 640) -> str:
    """Operations per week as bars."""
    height, pad = 200, 30
    weeks = sorted(per_week)
    top = max(per_week.values(), default=1) or 1
    bar = (width - 2 * pad) / max(len(weeks), 1)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 20}' "
        "role='img' aria-label='operations per week'>"
    ]
    for i, week in enumerate(weeks):
        h = per_week[week] / top * (height - 2 * pad)
        x = pad + i * bar
        parts.append(
            f"<rect x='{x:.1f}' y='{height - pad - h:.1f}' width='{bar * 0.8:.1f}' "
            f"height='{h:.1f}' fill='#1f77b4'><title>{week}: {per_week[week]}</title></rect>"
        )
        parts.append(f"<text x='{x:.1f}' y='{height - pad + 14}' font-size='10'>{week}</text>")
        parts.append(
            f"<text x='{x:.1f}' y='{height - pad - h - 2:.1f}' font-size='10'>"
            f"{per_week[week]}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _html(report: Report) -> str:
    import re

    body = markdown(report)
    # A small markdown → HTML: headings, tables, paragraphs (the report uses nothing else).
    out, table = [], False
    for line in body.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if re.fullmatch(r"[-| ]+", line):
                continue
            if not table:
                out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                table = True
            else:
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if table:
            out.append("</table>")
            table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    if table:
        out.append("</table>")
    charts = (
        "<h2>Availability over time per hub</h2>"
        + availability_svg(report.availability_series)
        + "<h2>Operations per week</h2>"
        + ops_svg(report.ops_per_week)
    )
    if report.usage is not None:
        from hubfleet.usage import cost_svg

        charts += "<h2>Estimated cost per hub</h2>" + cost_svg(report.usage)
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Fleet ops report</title>"
        f"<style>{style}</style></head><body>{''.join(out[:2])}{charts}{''.join(out[2:])}"
        "</body></html>"
    )
