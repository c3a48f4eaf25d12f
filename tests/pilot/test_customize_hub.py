"""customize_hub on the real control plane with real helm and a real Prefect server.

The health gate is `rollout` (Kubernetes rollout through the API): kwok pods serve no HTTP,
so the HTTP probes of `check_hub_health` cannot pass here; that is the only part not real.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
from kubernetes import client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from flows.customize_hub import (
    ConcurrentEdit,
    CustomizationRejected,
    commit_on_branch,
    customize_hub,
)
from flows.deploy_hub import deploy_hub
from hubfleet.loader import load_fleet
from hubfleet.values import hub_layers, hub_schema, validate_layers

pytestmark = [pytest.mark.kube]
REPO = Path(__file__).resolve().parents[2]
ALLOWED = "quay.io/jupyter/scipy-notebook:2024-12-09"


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_customize_rejects_then_applies_and_leaves_a_valid_patch(
    kube_pilot_fleet, kube, kube_api, helm, tmp_path
) -> None:
    root = kube_pilot_fleet
    cluster = next((root / "clusters").iterdir()).name
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fleet")
    values_file = root / "clusters" / cluster / "course.values.yaml"
    original = values_file.read_text()

    # A disallowed image is refused with the allow-list; nothing is deployed or written.
    with pytest.raises(CustomizationRejected) as refused:
        await customize_hub(
            cluster, "course", default_image="evil/miner:latest", operator="community-admin"
        )
    assert "evil/miner:latest" in str(refused.value)
    assert ALLOWED in str(refused.value)
    assert values_file.read_text() == original
    assert git(root, "branch", "--list", "customize/*") == ""
    with pytest.raises(client.exceptions.ApiException):
        client.AppsV1Api(kube_api).read_namespaced_deployment("course-hub", "course")

    # An allowed request deploys through deploy_hub (rollout gate) and commits a branch.
    result = await customize_hub(
        cluster,
        "course",
        admins=["prof@college.example.edu"],
        default_image=ALLOWED,
        profiles=["standard", "large"],
        default_profile="large",
        operator="community-admin",
        gate="rollout",
    )
    try:
        assert result.changed and result.deploy.action == "install"
        apps = client.AppsV1Api(kube_api)
        assert apps.read_namespaced_deployment("hub", "course").status.ready_replicas == 1
        # z2jh hands the hub its values through the `hub` Secret (values.yaml).
        secret = client.CoreV1Api(kube_api).read_namespaced_secret("hub", "course")
        rendered = base64.b64decode(secret.data["values.yaml"]).decode()
        assert "scipy-notebook" in rendered and "prof@college.example.edu" in rendered
        # The change is a commit on the branch the fleet is deployed from, and the checkout
        # is that commit (nothing left uncommitted).
        assert result.branch == "main" and git(root, "rev-parse", "main") == result.commit
        assert git(root, "log", "-1", "--format=%s") == (
            f"customize_hub {cluster}/course by community-admin"
        )
        assert git(root, "status", "--porcelain") == ""
        assert "prof@college.example.edu" in values_file.read_text()
        assert "prof@college.example.edu" not in original
        # The registry validates, and its values pass the chart's schema.
        done = subprocess.run(
            [sys.executable, "-m", "hubfleet.cli", "validate", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        fleet = load_fleet(root)
        hub = fleet.cluster(cluster).hub("course")
        layers = hub_layers(fleet, cluster, hub)
        validate_layers(layers, hub_schema(fleet, hub))
        profile_list = layers[-1].values["jupyterhub"]["hub"]["config"]["KubeSpawner"][
            "profile_list"
        ]
        assert [p["slug"] for p in profile_list] == ["standard", "large"]
        assert [p.get("default", False) for p in profile_list] == [False, True]
        # The run is in the history with who asked for it.
        async with get_client() as c:
            runs = await c.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["op:customize_hub", f"hub:{cluster}/course"])
                )
            )
        assert runs and all("operator:community-admin" in r.tags for r in runs)
        assert any(r.state_type.value == "FAILED" for r in runs)  # the refused one
        assert any(r.state_type.value == "COMPLETED" for r in runs)
        assert all(isinstance(r.id, UUID) for r in runs)

        # It sticks: the next deploy from the registry keeps the community's change (an
        # "upgrade" all the same: z2jh's first upgrade after install re-renders the proxy
        # token's hash, see README).
        again = await deploy_hub(cluster, "course", gate="rollout", operator="ops")
        assert again.health == "healthy", again
        secret = client.CoreV1Api(kube_api).read_namespaced_secret("hub", "course")
        rendered = base64.b64decode(secret.data["values.yaml"]).decode()
        assert "scipy-notebook" in rendered and "prof@college.example.edu" in rendered
        # Someone's uncommitted edit of the same file is refused, not overwritten.
        edited = values_file.read_text() + "# a maintainer's note, not committed yet\n"
        values_file.write_text(edited)
        with pytest.raises(ConcurrentEdit, match="has uncommitted changes"):
            await customize_hub(
                cluster, "course", admins=["someone@else.example.edu"], gate="rollout"
            )
        assert values_file.read_text() == edited
        assert git(root, "rev-parse", "main") == result.commit
    finally:
        # Leave the shared control plane as we found it (namespace names are per test).
        subprocess.run(
            [
                str(helm),
                "uninstall",
                "course",
                "-n",
                "course",
                "--kubeconfig",
                str(kube.kubeconfig),
            ],
            capture_output=True,
            timeout=120,
        )


def test_a_commit_on_a_branch_that_moved_is_refused(tmp_path: Path) -> None:
    """The compare-and-swap under customize_hub's commit: when another commit landed on
    the branch meanwhile, nothing is overwritten and the branch keeps the other commit."""
    root = tmp_path / "registry"
    (root / "clusters").mkdir(parents=True)
    values = root / "clusters" / "course.values.yaml"
    values.write_text("a: 1\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fleet")
    seen = git(root, "rev-parse", "main")
    values.write_text("a: 2\n")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "someone else")
    other = git(root, "rev-parse", "main")
    with pytest.raises(ConcurrentEdit, match="moved while customize_hub ran"):
        commit_on_branch(root, values, "a: 3\n", "main", seen, "customize")
    assert git(root, "rev-parse", "main") == other
    mine = commit_on_branch(root, values, "a: 3\n", "main", other, "customize")
    assert git(root, "rev-parse", "main") == mine
