"""Fixtures for hubs on the real node: the hub images imported into the node, a fleet whose
one cluster is the test control plane (`hub_access: port-forward`, the node's values as
its `cluster.values.yaml`), and one hub deployed by hubfleet's own `deploy_hub` that the
rotation and pre-warm tests share (a deploy costs about a minute on this machine).

Tests that break or remove their hub (test_deploy_on_node.py) make their own with
`node_fleet`; tests that only operate a hub use `node_hub`. Secrets (the hub's admin
service token, the test users' password) are generated per session, live in the hub's
Secret values block only, and are never printed.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nodefleet import HUB_IMAGES, NodeFleet, NodeHub, remove_hub, write_node_fleet
from prefect.blocks.system import Secret

from testenv import hubimages


@pytest.fixture(scope="session")
def node_image_refs(real_node) -> dict[str, str]:
    """The hub, proxy and single-user images, built (cached by content) and imported."""
    archives = {name: hubimages.build_image(name) for name in HUB_IMAGES}
    for archive in archives.values():
        real_node.import_image(archive, timeout=600)
    return {name: archive.ref for name, archive in archives.items()}


@pytest.fixture
def node_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kube, kube_api, node_image_refs, helm
) -> Iterator[NodeFleet]:
    """A fleet of its own with one (not yet deployed) hub on the real node, for a test that
    breaks or removes it. HUBFLEET_FLEET points at it; the hub is removed after."""
    fleet, access = write_node_fleet(tmp_path / "fleet", node_image_refs, kube)
    monkeypatch.setenv("HUBFLEET_FLEET", str(fleet.root))
    access.save(fleet.cluster, overwrite=True)
    yield fleet
    remove_hub(kube, kube_api, helm, fleet.hub)


@pytest.fixture(scope="session")
async def shared_node_hub(
    prefect_server, tmp_path_factory, kube, kube_api, node_image_refs, helm
) -> AsyncIterator[NodeHub]:
    """One hub on the real node, deployed by `deploy_hub` (health gate `auto`: the ops
    token minted in the hub pod, reachable → api → auth → spawn through the port-forward),
    shared by the tests that operate it. Removed at the end of the session."""
    from flows.deploy_hub import deploy_hub

    fleet, access = write_node_fleet(
        tmp_path_factory.mktemp("node-hub") / "fleet", node_image_refs, kube
    )
    await access.asave(fleet.cluster, overwrite=True)
    admin, password = secrets.token_hex(32), secrets.token_urlsafe(18)
    # Secret values (hubfleet's path for secrets): an admin service for the tests' API
    # calls, and a password for users of the chart's DummyAuthenticator (JupyterHub 5 lets
    # nobody in without an allow rule: allow_all, as for a workshop hub).
    values = {
        "jupyterhub": {
            "hub": {
                "services": {"test-admin": {"apiToken": admin, "admin": True}},
                "config": {
                    "Authenticator": {"allow_all": True},
                    "DummyAuthenticator": {"password": password},
                },
            }
        }
    }
    await Secret(value=values).save(f"hub-values-{fleet.cluster}-{fleet.hub}", overwrite=True)
    saved = os.environ.get("HUBFLEET_FLEET")
    os.environ["HUBFLEET_FLEET"] = str(fleet.root)
    try:
        started = time.monotonic()
        result = await deploy_hub(cluster=fleet.cluster, hub=fleet.hub, wait_timeout="5m")
        took = time.monotonic() - started
    finally:
        _restore_env("HUBFLEET_FLEET", saved)
    assert result.action == "install" and result.health == "healthy", result
    print(f"\nshared hub: deploy_hub to healthy on the real node in {took:.1f}s")
    try:
        yield NodeHub(fleet.root, fleet.cluster, fleet.hub, admin, password, took)
    finally:
        remove_hub(kube, kube_api, helm, fleet.hub)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture
def node_hub(shared_node_hub: NodeHub, monkeypatch: pytest.MonkeyPatch) -> NodeHub:
    """The shared hub, with HUBFLEET_FLEET pointing at its fleet for this test."""
    monkeypatch.setenv("HUBFLEET_FLEET", str(shared_node_hub.root))
    return shared_node_hub
