"""Fixtures for the login tests: hubs stopped after each test, and Dex built once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.local_hub import LocalHub


@pytest.fixture(autouse=True)
def stop_hubs_after_test(data_dir: Path) -> Iterator[None]:
    """Whatever a test asserts, its hubs are stopped (by PID) when it ends."""
    yield
    for state in (data_dir / "hubs").glob("*/*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()


@pytest.fixture(scope="session")
def dex_binary() -> Path:
    """Dex from the Go module proxy (testenv/dex.py), built once into the cache."""
    from testenv.dex import build_dex

    return build_dex()
