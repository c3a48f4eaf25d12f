"""Fixtures for the terraform tests: a throwaway fleet whose clusters use the offline
`testing` module, real terraform (the testenv's), and the session's real Prefect server."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tf_env(terraform_bin: Path, prefect_server: str) -> Iterator[None]:
    """Point hubfleet at the test's terraform binary (restored afterwards)."""
    old = os.environ.get("HUBFLEET_TERRAFORM")
    os.environ["HUBFLEET_TERRAFORM"] = str(terraform_bin)
    yield
    if old is None:
        os.environ.pop("HUBFLEET_TERRAFORM", None)
    else:
        os.environ["HUBFLEET_TERRAFORM"] = old


FleetWriter = Callable[..., Path]


@pytest.fixture
def lab_fleet(tmp_path: Path, tf_env: None) -> Iterator[FleetWriter]:
    """Write a fleet with one `testing`-module cluster; returns a writer to change it.

    `write(terraform="...yaml...", hubs="...yaml...")` rewrites cluster.yaml, as an
    engineer editing the registry would. The cluster name is unique per test so state,
    blocks and concurrency limits on the shared server never collide.
    """
    root = tmp_path / "fleet"
    (root / "clusters").mkdir(parents=True)
    shutil.copy(REPO / "fleet" / "fleet.yaml", root / "fleet.yaml")
    shutil.copy(REPO / "fleet" / "common.values.yaml", root / "common.values.yaml")
    name = f"lab-{uuid.uuid4().hex[:6]}"
    old = os.environ.get("HUBFLEET_FLEET")
    os.environ["HUBFLEET_FLEET"] = str(root)

    def write(
        terraform: str = "  module: testing\n", hubs: str = "hubs: []\n", cluster: str = name
    ) -> Path:
        directory = root / "clusters" / cluster
        directory.mkdir(exist_ok=True)
        (directory / "cluster.yaml").write_text(
            f"name: {cluster}\nprovider: local\nlocal: {{}}\nterraform:\n{terraform}{hubs}",
            encoding="utf-8",
        )
        return directory

    write.name = name  # type: ignore[attr-defined]
    write.root = root  # type: ignore[attr-defined]
    yield write
    if old is None:
        os.environ.pop("HUBFLEET_FLEET", None)
    else:
        os.environ["HUBFLEET_FLEET"] = old
