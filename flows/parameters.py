"""Bounded parameter types of the operations, in one place.

A flow's signature is its API: the server validates a deployment run's parameters against
the schema generated from it (the UI form shows the bounds), and Prefect validates them
again before the flow body runs, so an out-of-range value is refused before any change,
naming the parameter. Every duration, timeout, age and count has a range here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field

DAY = 86_400

#: Seconds to wait for a hub's lock before giving up (None: tasks.locks.LOCK_WAIT).
LockWait = Annotated[
    float | None,
    Field(ge=1, le=DAY, description="Seconds to wait for the hub's lock (1 to 86400)."),
]
#: Seconds a plan waits for a human's approval.
ApprovalTimeout = Annotated[
    int, Field(ge=60, le=7 * DAY, description="Seconds to wait for approval (60 to 604800).")
]
#: Seconds an event hub's export may take.
ExportTimeout = Annotated[
    float, Field(ge=60, le=DAY, description="Seconds the export may take (60 to 86400).")
]
#: A helm/rollout wait: a number and a unit (s, m, h), at most 24h.
HelmWait = Annotated[
    str,
    Field(
        pattern=r"^([1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|([1-9]|1[0-9]|2[0-4])h)$",
        description="How long helm waits for the rollout: e.g. 90s, 5m, 1h (at most 24h).",
    ),
]
#: How far back a report looks: a number and a unit (m, h, d, w), at most about 10 years.
Since = Annotated[
    str,
    Field(
        pattern=r"^[1-9][0-9]{0,3}[mhdw]$",
        description="How far back: a number and a unit, e.g. 30d, 12h, 2w.",
    ),
]
#: Rotate credentials older than this (None: each kind's policy).
MaxAge = Annotated[
    timedelta | None,
    Field(
        ge=timedelta(0),
        le=timedelta(days=3650),
        description="Rotate what is older than this (0 to 3650 days; empty: each kind's policy).",
    ),
]
#: How many hubs a fleet run changes at once.
WaveSize = Annotated[int | None, Field(ge=1, le=10_000, description="Hubs per wave (1-10000).")]
WavePercent = Annotated[
    float | None, Field(gt=0, le=100, description="Hubs per wave, as a percentage (0-100].")
]
#: Placeholder pods kept warm on a cluster.
Placeholders = Annotated[int | None, Field(ge=0, le=10_000)]
#: Hubs probed at once per cluster, a sweep's retries, back-off and per-probe timeout.
PerCluster = Annotated[int | None, Field(ge=1, le=1_000)]
AlertAfter = Annotated[int, Field(ge=1, le=1_000)]
Retries = Annotated[int, Field(ge=0, le=10)]
Backoff = Annotated[float, Field(ge=0, le=60)]
ProbeTimeout = Annotated[float, Field(gt=0, le=300)]
#: The longest a whole sweep may take: each of its waits is bounded by what is left.
SweepDeadline = Annotated[
    float, Field(ge=5, le=DAY, description="Seconds the whole sweep may take (5 to 86400).")
]
#: A fleet selection: cluster or cluster/hub names.
Selection = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=10_000)
]
#: A JupyterHub user or group name: printable, no spaces or control/format characters
#: (checked again with the names' own rules in flows/customize_hub.py).
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s\x00-\x1f\x7f]+$")]
Names = Annotated[list[Name] | None, Field(max_length=1_000)]
