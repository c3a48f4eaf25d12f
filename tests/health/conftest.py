"""Fixtures of the health tests: a fleet with hubs of our own, a webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet
from webhook import Webhook

from tasks.local_hub import LocalHub

REPO = Path(__file__).resolve().parents[2]

#: Local hubs only these tests use, so they never collide with other test directories.
HC_CLUSTER = """\
name: hc
provider: local
local: {}
hubs:
  - {name: ok, domain: ok.hc.hubfleet.test, tier: staging, kind: standing}
  - name: nospawn
    domain: nospawn.hc.hubfleet.test
    tier: staging
    kind: standing
    values: [nospawn.values.yaml]
  - {name: flaky, domain: flaky.hc.hubfleet.test, tier: staging, kind: standing}
  - {name: sweep, domain: sweep.hc.hubfleet.test, tier: staging, kind: standing}
"""
# A spawner that cannot start a server: its command does not exist.
NOSPAWN_VALUES = """\
jupyterhub:
  hub:
    config:
      Spawner:
        cmd: [/nonexistent/jupyterhub-singleuser]
"""
KC_CLUSTER = """\
name: kc
provider: kubeconfig
kubeconfig: {context: testenv}
hubs:
  - {name: hc-k8s, domain: hc-k8s.kc.hubfleet.test, tier: staging, kind: standing}
"""


@pytest.fixture
def health_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example fleet plus cluster `hc` (local hubs) and `kc` (kubeconfig), in use for
    this test only (HUBFLEET_FLEET is restored after it, so other tests never see it)."""
    root = copy_example_fleet(tmp_path)
    (root / "clusters" / "hc").mkdir()
    (root / "clusters" / "hc" / "cluster.yaml").write_text(HC_CLUSTER)
    (root / "clusters" / "hc" / "nospawn.values.yaml").write_text(NOSPAWN_VALUES)
    (root / "clusters" / "kc").mkdir()
    (root / "clusters" / "kc" / "cluster.yaml").write_text(KC_CLUSTER)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    return root


@pytest.fixture(autouse=True)
def stop_hubs_after_test(data_dir: Path) -> Iterator[None]:
    """Whatever a test asserts, the hubs it started are stopped (by PID) when it ends."""
    yield
    for state in (data_dir / "hubs" / "hc").glob("*/state.json"):
        LocalHub(state.parent, state.parent.name).stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook
