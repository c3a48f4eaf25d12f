"""The build step never fails silently: a missing Go or a failing build names the tool,
the version and the command, with the output tail. Uses the real go command and proxy."""

from __future__ import annotations

import shutil

import pytest

from testenv import build


def test_missing_go_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no go
    with pytest.raises(build.ToolBuildError) as exc:
        build.check_go()
    msg = str(exc.value)
    assert exc.value.tool == "go"
    assert "apt-get install golang-go" in msg and "go.dev/dl" in msg


@pytest.mark.skipif(
    shutil.which("go") is None, reason="covered by test_missing_go_says_how_to_install"
)
def test_failed_build_names_tool_version_and_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HUBFLEET_CACHE_DIR", str(tmp_path))  # never touch the real cache
    with pytest.raises(build.ToolBuildError) as exc:
        build.build_helm("3.0.0-does-not-exist")
    e = exc.value
    assert (e.tool, e.version) == ("helm", "3.0.0-does-not-exist")
    assert (
        "go install" in e.command and "helm.sh/helm/v3/cmd/helm@v3.0.0-does-not-exist" in e.command
    )
    assert e.output_tail  # the go command's own explanation
    assert "helm 3.0.0-does-not-exist" in str(e) and e.command in str(e)
    assert not (tmp_path / "bin" / "helm-3.0.0-does-not-exist").exists()


def test_cached_binaries_are_reused(testenv_tools):
    """Once built, ensure_tools returns the same cached paths without building (fast)."""
    import time

    t0 = time.monotonic()
    again = build.ensure_tools(progress=lambda m: pytest.fail(f"unexpected build step: {m}"))
    assert time.monotonic() - t0 < 10
    assert again == testenv_tools
    versions = build.load_versions()
    k = versions["kubernetes"]["version"]
    assert again["kube-apiserver"] == build.bin_dir() / f"kube-apiserver-{k}"
    assert again["helm"].name == f"helm-{versions['helm']['version']}"
    assert again["rclone"].name == f"rclone-{versions['rclone']['version']}"
