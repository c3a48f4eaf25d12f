"""`hubfleet events`: user errors are plain messages with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HUBFLEET = str(Path(sys.executable).parent / "hubfleet")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HUBFLEET, *args], capture_output=True, text=True, timeout=120)


def test_bad_end_is_refused_plainly() -> None:
    bad = run("events", "extend", "local", "workshop", "tomorrow")
    assert bad.returncode == 2
    assert "END 'tomorrow' is not a date-time; write e.g. 2027-03-18T18:00:00+01:00" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    naive = run("events", "extend", "local", "workshop", "2027-03-18T18:00:00")
    assert naive.returncode == 2 and "has no UTC offset" in naive.stderr


def test_events_commands_are_listed() -> None:
    help_ = run("events", "--help")
    assert help_.returncode == 0
    for command in ("sync", "create", "extend", "expire", "reap"):
        assert command in help_.stdout
