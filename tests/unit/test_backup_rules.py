"""The pure rules of backups: which copies retention deletes, where a hub's copies go, how
an export error reads as a backup's, and the CLI's refusal of a bad copy name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hubfleet.model import BackupPolicy, Cluster
from tasks.backup import BackupFailed, backup_base, reword, to_prune
from tasks.export import ExportFailed

A, B, C, D = "20270101T010000Z", "20270102T010000Z", "20270103T010000Z", "20270104T010000Z"


def test_retention_keeps_the_newest_verified_copies() -> None:
    assert to_prune([A, B, C], [], keep=2) == [A]
    assert to_prune([A, B, C], [], keep=3) == []
    assert to_prune([C, A, B], [], keep=1) == [A, B]


def test_retention_removes_only_incomplete_copies_older_than_the_newest_verified() -> None:
    # B failed verification; D may be a backup still running.
    assert to_prune([A, C], [B, D], keep=2) == [B]
    # Nothing verified yet: nothing incomplete is touched either.
    assert to_prune([], [A, B], keep=1) == []
    with pytest.raises(ValueError):
        to_prune([A], [], keep=0)


def test_backup_base_defaults_on_local_and_refuses_a_directory_for_kubernetes() -> None:
    local = Cluster(name="local", provider="local", local={})
    kube = Cluster(name="k", provider="kubeconfig", kubeconfig={"context": "c"})
    assert backup_base(local, BackupPolicy(), Path("/data/backups")) == "file:///data/backups"
    assert backup_base(kube, BackupPolicy(url="s3://bucket/p/"), Path("/x")) == "s3://bucket/p"
    with pytest.raises(BackupFailed, match=r"cluster 'k' is on kubeconfig and fleet.yaml has no"):
        backup_base(kube, BackupPolicy(), Path("/x"))
    with pytest.raises(BackupFailed, match=r"backup.url 'file:///srv' is a local directory"):
        backup_base(kube, BackupPolicy(url="file:///srv"), Path("/x"))


def test_an_export_error_reads_as_a_backup_error() -> None:
    text = str(
        reword(
            ExportFailed(
                "export Job ns/x failed (BackoffLimitExceeded: y); the hub was not removed. "
                "See the Job's pod logs, fix, re-run the expiry."
            )
        )
    )
    assert text.startswith("backup Job ns/x failed (BackoffLimitExceeded: y)")
    assert "removed" not in text and "expiry" not in text
    assert text.endswith("no earlier copy was deleted. Fix the cause, then re-run the backup.")


def test_restore_refuses_a_bad_copy_name_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    from hubfleet.cli import main

    argv = sys.argv
    sys.argv = ["hubfleet", "restore", "local", "staging", "--copy", "yesterday"]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--copy 'yesterday' is not a copy's name" in err and "Traceback" not in err
