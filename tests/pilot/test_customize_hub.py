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

from flows.customize_hub import CustomizationRejected, customize_hub
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
        assert result["changed"] and result["deploy"]["action"] == "install"
        apps = client.AppsV1Api(kube_api)
        assert apps.read_namespaced_deployment("hub", "course").status.ready_replicas == 1
        # z2jh hands the hub its values through the `hub` Secret (values.yaml).
        secret = client.CoreV1Api(kube_api).read_namespaced_secret("hub", "course")
        rendered = base64.b64decode(secret.data["values.yaml"]).decode()
        assert "scipy-notebook" in rendered and "prof@college.example.edu" in rendered
        # The working tree is as it was; the change is a commit on a branch.
        assert values_file.read_text() == original
        branch = result["branch"]
        assert git(root, "rev-parse", branch) == result["commit"]
        assert "default_image" not in git(
            root, "show", f"{branch}:clusters/{cluster}/course.values.yaml"
        )
        # The branch's fleet validates, and its values pass the chart's schema.
        copy = tmp_path / "branch"
        git(root, "worktree", "add", "-q", str(copy), branch)
        done = subprocess.run(
            [sys.executable, "-m", "hubfleet.cli", "validate", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        fleet = load_fleet(copy)
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
