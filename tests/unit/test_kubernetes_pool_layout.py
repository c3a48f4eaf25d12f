"""Deployments on a Kubernetes work pool run in the worker image: `hubfleet setup` lays
them out for the image's paths, and a fleet copied out of git (the image has no git) still
tags runs with the commit it was copied from. The Job itself runs in
tests/node/test_kubernetes_worker.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from deployments.registry import OPERATIONS, resolve
from deployments.setup import HEARTBEAT_SECONDS, deployment_payload
from flows.operation import REVISION_FILE, fleet_revision
from hubfleet.loader import load_fleet
from hubfleet.paths import REPO_ROOT, WORKER_IMAGE_FLEET, WORKER_IMAGE_ROOT

REPO = Path(__file__).resolve().parents[2]


def _payloads(pool_type: str) -> dict[str, dict]:
    fleet = load_fleet(REPO / "fleet")
    available = resolve(OPERATIONS)
    return {
        f"{flow.name}/{spec.name}": deployment_payload(
            spec, flow, fleet, "pool", HEARTBEAT_SECONDS, pool_type
        )
        for spec, flow in available
    }


def _workdir(payload: dict) -> str:
    (step,) = payload["pull_steps"]
    return step["prefect.deployments.steps.set_working_directory"]["directory"]


def test_kubernetes_pool_deployments_work_in_the_image() -> None:
    process, kubernetes = _payloads("process"), _payloads("kubernetes")
    assert process.keys() == kubernetes.keys() and "publish_fleet_report/default" in kubernetes
    for name, payload in kubernetes.items():
        assert _workdir(payload) == WORKER_IMAGE_ROOT, name
        assert payload["job_variables"]["env"]["HUBFLEET_FLEET"] == WORKER_IMAGE_FLEET, name
        # Everything else (schema, schedules, tags) is the same as on a process pool.
        on_host = process[name]
        assert _workdir(on_host) == str(REPO_ROOT)
        assert on_host["job_variables"]["env"]["HUBFLEET_FLEET"] == str((REPO / "fleet").resolve())
        strip = ("pull_steps", "job_variables")
        assert {k: v for k, v in payload.items() if k not in strip} == {
            k: v for k, v in on_host.items() if k not in strip
        }, name


def test_a_fleet_outside_git_answers_with_its_recorded_revision(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    assert fleet_revision(fleet) == "uncommitted"
    (fleet / REVISION_FILE).write_text("93380e7\n")
    assert fleet_revision(fleet) == "93380e7"
    # Only a commit-like word is taken; anything else is no revision.
    (fleet / REVISION_FILE).write_text("93380e7; rm -rf /\n")
    assert fleet_revision(fleet) == "uncommitted"


def test_in_git_the_commit_wins_over_a_revision_file(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "fleet.yaml").write_text("name: t\n")
    git("add", ".")
    git("commit", "-qm", "fleet")
    head = git("log", "-1", "--format=%h")
    assert fleet_revision(tmp_path / "fleet") == head
    # A file claiming another commit is an uncommitted change, not a revision.
    (tmp_path / "fleet" / REVISION_FILE).write_text("abc1234\n")
    assert fleet_revision(tmp_path / "fleet") == "uncommitted"


def test_the_worker_image_copies_the_checkout_and_nothing_ignored() -> None:
    from testenv import hubimages

    files = hubimages.source_files(hubimages.WORKER_SOURCES)
    for wanted in (
        "pyproject.toml",
        "flows/fleet_report.py",
        "deployments/kubernetes-work-pool.json",
        "helm/hub/Chart.yaml",
        "fleet/fleet.yaml",
    ):
        assert wanted in files
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.startswith(("tests/", ".venv/", "benchmarks/"))]
    # Built ahead by every `./dev test`: only the images whose key is pinned versions.
    assert "worker" in hubimages.RECIPES and "worker" not in hubimages.PINNED_IMAGES
    assert "worker-deps" not in hubimages.PINNED_IMAGES


def test_an_edit_of_the_code_changes_the_worker_key_not_its_dependencies(monkeypatch) -> None:
    """The worker image is its dependencies' image plus this checkout: only the top is
    rebuilt when the code changes (minutes saved on every commit's first test run)."""
    from testenv import hubimages

    before = hubimages.image_key("worker-deps"), hubimages.image_key("worker")
    monkeypatch.setattr(hubimages, "sources_digest", lambda paths: "an edit")
    after = hubimages.image_key("worker-deps"), hubimages.image_key("worker")
    assert after[0] == before[0] and after[1] != before[1]
    assert hubimages.RECIPES["worker"].parent == "worker-deps"


def test_a_layer_applied_on_another_removes_what_it_whites_out(tmp_path) -> None:
    """`_extract_layer` applies `_diff_layer`'s whiteouts as a runtime does, so an image
    built on another image's layers starts from what that image really holds."""
    from testenv import hubimages

    root = tmp_path / "build"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "a").write_text("a")
    (root / "gone-dir").mkdir()
    (root / "gone-dir" / "x").write_text("x")
    (root / "gone-file").write_text("f")
    before = hubimages._snapshot(root)
    (root / "gone-file").unlink()
    (root / "gone-dir" / "x").unlink()
    (root / "gone-dir").rmdir()
    (root / "keep" / "b").write_text("b")
    layer = hubimages._diff_layer(root, before)

    fresh = tmp_path / "fresh"
    (fresh / "keep").mkdir(parents=True)
    (fresh / "keep" / "a").write_text("a")
    (fresh / "gone-dir").mkdir()
    (fresh / "gone-dir" / "x").write_text("x")
    (fresh / "gone-file").write_text("f")
    hubimages._extract_layer(layer, fresh)
    left = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*"))
    assert left == ["keep", "keep/a", "keep/b"]


def test_every_registered_operation_imports() -> None:
    """`hubfleet setup` registers every entry: each names a flow that exists."""
    flows = resolve(OPERATIONS)
    assert len(flows) == len(OPERATIONS)
    assert all(flow.name == spec.function for spec, flow in flows if spec.name == "default")


def test_helm_errors_of_a_race_are_transient_the_rest_are_not(tmp_path) -> None:
    """Errors another helm run causes in passing are retried (the task's transient
    retries); a real failure is not."""
    import stat

    from tasks.helm import Helm, HelmError, HelmTransient

    fake = tmp_path / "helm"
    fake.write_text('#!/bin/sh\necho "$FAKE_HELM_ERROR" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    helm = Helm(None, binary=fake)
    import os

    try:
        for message, kind in [
            ("Error: UPGRADE FAILED: release: already exists", HelmTransient),
            ("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
             HelmTransient),
            ("Error: INSTALLATION FAILED: chart requires kubeVersion", HelmError),
        ]:  # fmt: skip
            os.environ["FAKE_HELM_ERROR"] = message
            try:
                helm.run("upgrade", "--install", "x", "chart")
            except (HelmError, HelmTransient) as exc:
                assert type(exc) is kind and message in str(exc), (message, exc)
            else:
                raise AssertionError("the fake helm failed, the call did not")
    finally:
        os.environ.pop("FAKE_HELM_ERROR", None)
        helm.close()
