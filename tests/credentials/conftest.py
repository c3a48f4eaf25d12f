"""Fixtures for the credential rotation suite.

`secret_ledger` records every secret value a rotation held in memory (old and new, also
the ones rolled back), so the last test of the suite can prove none of them leaked into
run logs, artifacts, flow-run parameters or files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tasks.rotation
from tasks.local_hub import LocalHub


class _RecordingRotations(dict[str, Any]):
    """Stands in for tasks.rotation._ACTIVE: notes each rotation's secrets as it ends."""

    def __init__(self, ledger: set[str]):
        super().__init__()
        self.ledger = ledger

    def __delitem__(self, key: str) -> None:
        rotation = self[key]
        for issued in (rotation.old, rotation.new):
            if issued is not None:
                self.ledger.add(issued.secret.get_secret_value())
        super().__delitem__(key)


#: Secret values created or rotated away during this session's credential tests.
LEDGER: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def secret_ledger() -> Iterator[set[str]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.rotation, "_ACTIVE", _RecordingRotations(LEDGER))
        yield LEDGER


@pytest.fixture(autouse=True)
def stop_hubs_after_test(data_dir: Path) -> Iterator[None]:
    """Whatever a test asserts, its hubs are stopped (by PID) when it ends."""
    yield
    for state in (data_dir / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()
