"""The audit log: what was done to which hub, by whom, when, with what result.

Pure logic, no Prefect: parse the CLI's filters into an `AuditQuery`, turn flow runs (any
object with Prefect's FlowRun attributes) into `AuditRow`s, and format them as a table,
JSON or CSV. The Prefect run history is the record: runs carry the tags `op:`,
`cluster:`, `hub:<cluster>/<hub>`, `operator:` and `revision:` (see flows/operation.py).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hubfleet.errors import HubfleetError
from hubfleet.model import Fleet

#: Recorded for a deployment run started from the Prefect UI or API: self-hosted Prefect
#: does not say who clicked, and the worker's $USER would be a lie.
UNKNOWN_UI_OPERATOR = "unknown(ui/api)"
#: Operator names only a run's provenance may produce (flows/operation.py).
RESERVED_OPERATORS = ("schedule", UNKNOWN_UI_OPERATOR)
#: What an operator name given in-process may look like (a login or an email address).
_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class OperatorRefused(HubfleetError):
    """An operator name that is not a plain name, or one only provenance may set."""


def check_operator(given: str, allow_reserved: bool = False) -> str:
    """`given` if it is a plain name (and, unless `allow_reserved`, not a reserved one)."""
    shown = given if len(given) <= 100 else given[:100] + "…"
    if (given in RESERVED_OPERATORS and not allow_reserved) or not _OPERATOR.fullmatch(given):
        raise OperatorRefused(
            f"operator {shown!r}: give a plain name (letters, digits, . _ @ + -, at most 64 "
            f"characters, not {' or '.join(RESERVED_OPERATORS)}); scheduled, automated and "
            "UI runs are recorded from how they were created. Nothing was run."
        )
    return given


#: Prefect state types a user may filter on (case-insensitive).
STATES = (
    "completed",
    "failed",
    "crashed",
    "cancelled",
    "cancelling",
    "running",
    "pending",
    "scheduled",
    "paused",
)
FORMATS = ("table", "json", "csv")
_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class AuditInputError(HubfleetError):
    """A filter of `hubfleet audit` is malformed; the message names it and the fix."""


@dataclass(frozen=True)
class AuditQuery:
    """What to look for. `tags` must all be present on a run."""

    tags: tuple[str, ...]
    since: datetime | None
    states: tuple[str, ...]  # upper-case Prefect StateType values


@dataclass(frozen=True)
class AuditRow:
    """One run, as the audit log shows it."""

    started: str  # ISO 8601, UTC; the expected start if the run never started
    op: str
    target: str
    operator: str
    outcome: str  # the state name: Completed, Failed, Crashed, ...
    revision: str
    run: str  # the run's name
    url: str  # the run in the Prefect UI


def parse_duration(value: str, option: str = "--since", units: str = "mhdw") -> timedelta:
    """'30d' -> 30 days: a number and one of `units` (m(inutes), h(ours), d(ays), w(eeks)).
    The one parser of every duration option (`--since`, `--max-age`); the error names the
    option, the value and the forms it takes."""
    match = _SINCE.match(value.strip())
    if not match or match[2] not in units:
        forms = ", ".join(
            f"{n}{u}" for n, u in zip((30, 12, 90, 2), "dhmw", strict=True) if u in units
        )
        raise AuditInputError(f"{option} {value!r}: use a number and a unit, e.g. {forms}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """'30d' -> the UTC time 30 days ago (None: no bound)."""
    if value is None:
        return None
    return (now or datetime.now(UTC)) - parse_duration(value)


def parse_states(values: list[str] | None) -> tuple[str, ...]:
    out = []
    for value in values or []:
        if value.lower() not in STATES:
            raise AuditInputError(f"--state {value!r}: allowed: {', '.join(STATES)}")
        out.append(value.upper())
    return tuple(out)


def hub_tag(fleet: Fleet | None, hub: str, cluster: str | None) -> str:
    """The `hub:` tag for --hub: 'cluster/hub', or a bare hub name found in the fleet.

    The history outlives the fleet (a torn-down hub is gone from it), so 'cluster/hub'
    always works; a bare name must be unique among the fleet's hubs.
    """
    if "/" in hub:
        c, _, h = hub.partition("/")
        if cluster and cluster != c:
            raise AuditInputError(f"--hub {hub!r} is in cluster {c!r}, not --cluster {cluster!r}")
        return f"hub:{c}/{h}"
    if cluster:
        return f"hub:{cluster}/{hub}"
    clusters = fleet.clusters if fleet else []
    found = [c.name for c in clusters if any(x.name == hub for x in c.hubs)]
    if len(found) == 1:
        return f"hub:{found[0]}/{hub}"
    if not found:
        raise AuditInputError(
            f"--hub {hub!r}: no hub of that name in the fleet; give it as CLUSTER/HUB "
            "(e.g. local/staging) to search the history of a hub that no longer exists"
        )
    raise AuditInputError(
        f"--hub {hub!r} is in several clusters ({', '.join(found)}); give it as CLUSTER/HUB "
        "or add --cluster"
    )


def build_query(
    fleet: Fleet | None,
    *,
    hub: str | None = None,
    cluster: str | None = None,
    op: str | None = None,
    states: list[str] | None = None,
    since: str | None = None,
    now: datetime | None = None,
) -> AuditQuery:
    """Turn the CLI's filters into tags, a start time and state types."""
    tags: list[str] = []
    if hub:
        tags.append(hub_tag(fleet, hub, cluster))
    if cluster:
        tags.append(f"cluster:{cluster}")
    if op:
        tags.append(f"op:{op}")
    return AuditQuery(tuple(tags), parse_since(since, now), parse_states(states))


def _tag(tags: list[str], prefix: str, default: str = "-") -> str:
    values = sorted(t[len(prefix) :] for t in tags if t.startswith(prefix))
    return ",".join(values) if values else default


def ui_base_url(api_url: str) -> str:
    """The UI's address from the API's: `http://host:4200/api` -> `http://host:4200`."""
    return api_url.rstrip("/").removesuffix("/api")


def to_row(run: dict[str, Any], ui_url: str) -> AuditRow:
    """An AuditRow from a flow run as the REST API returns it (JSON)."""
    tags = list(run.get("tags") or [])
    when = run.get("start_time") or run.get("expected_start_time") or run.get("created")
    target = _tag(tags, "hub:", default=_tag(tags, "cluster:"))
    state = run.get("state") or {}
    return AuditRow(
        started=(
            datetime.fromisoformat(when).astimezone(UTC).isoformat(timespec="seconds")
            if when
            else "-"
        ),
        op=_tag(tags, "op:"),
        target=target,
        operator=_tag(tags, "operator:", default="unrecorded"),
        outcome=state.get("name") or "-",
        revision=_tag(tags, "revision:"),
        run=run.get("name", "-"),
        url=f"{ui_url}/runs/flow-run/{run['id']}",
    )


def to_json(rows: list[AuditRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def to_csv(rows: list[AuditRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(AuditRow.__dataclass_fields__))
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return buffer.getvalue()
