"""backup_hub, backup_fleet and restore_hub on a local hub: a real JupyterHub (and its
users' real servers, through configurable-http-proxy), a real Prefect server, the real
filesystem, and S3 on moto (auth enforced) through the real boto3 client.

The one stand-in: `Lossy`, a directory destination that silently drops one file, as a
store that loses an object would; nothing real here loses files on demand.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter
from prefect.client.schemas.sorting import FlowRunSort
from waiting import wait_for

import tasks.backup as backup_tasks
from flows.backup_hub import backup_fleet, backup_hub
from flows.deploy_hub import deploy_hub
from flows.restore_hub import restore_hub
from flows.teardown_hub import teardown_hub
from hubfleet.loader import load_fleet
from hubfleet.paths import REPO_ROOT, fleet_dir
from tasks import jupyterhub_api as api
from tasks.backup import MANIFEST, BackupFailed, RestoreRefused
from tasks.export import _Directory
from tasks.hub_credentials import _mint_bootstrap_token
from tasks.local_hub import local_hub
from tasks.locks import LockTimeout, hub_lock

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(autouse=True)
async def remove_hubs_after_test(data_dir: Path) -> Any:
    """Each test's local hubs are torn down (keep_data=false: directory, database and ops
    token block gone): the session's later tests (tests/flows/test_local_hub_flows.py)
    deploy the same example hubs and expect them new."""
    yield
    for hub_dir in sorted((data_dir / "hubs" / "local").glob("*")):
        await teardown_hub("local", hub_dir.name, keep_data=False, operator="test-cleanup")


@pytest.fixture
def backup_fleet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """A copy of the example fleet; call it with the `backup:` settings to use."""
    root = tmp_path / "fleet"
    shutil.copytree(REPO_ROOT / "fleet", root)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))

    def write(**backup: Any) -> Path:
        path = root / "fleet.yaml"
        data = yaml.safe_load(path.read_text())
        data["backup"] = backup
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return root

    return write


class Users:
    """Users of a running local hub, acting through their own servers' contents API."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def serve(self, user: str) -> None:
        try:
            api.call("POST", f"{self.url}/hub/api/users/{user}", token=self.token)
        except api.HubApiError as exc:  # the session's data dir keeps a hub's users
            assert "HTTP 409" in str(exc), exc
        api.call("POST", f"{self.url}/hub/api/users/{user}/server", token=self.token, timeout=60)

        def ready() -> bool:
            info = api.call("GET", f"{self.url}/hub/api/users/{user}", token=self.token).json()
            return bool(info["servers"].get("", {}).get("ready"))

        wait_for(f"{user}'s server", ready, 60)

    def _contents(self, method: str, user: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/user/{user}/api/contents/{path}",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
            **kw,
        )

    def write(self, user: str, path: str, text: str) -> None:
        body = {"type": "file", "format": "text", "content": text}
        response = self._contents("PUT", user, path, json=body)
        assert response.status_code in (200, 201), response.text

    def mkdir(self, user: str, path: str) -> None:
        response = self._contents("PUT", user, path, json={"type": "directory"})
        assert response.status_code in (200, 201), response.text

    def read(self, user: str, path: str) -> str | None:
        response = self._contents("GET", user, path, params={"content": "1"})
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return str(response.json()["content"])

    def delete(self, user: str, path: str) -> None:
        response = self._contents("DELETE", user, path)
        assert response.status_code == 204, response.text


def copies_at(root: Path) -> dict[str, bool]:
    """Copies under a hub's backup directory: stamp -> verified (has its manifest)."""
    if not root.is_dir():
        return {}
    return {p.name: (p / MANIFEST).is_file() for p in sorted(root.iterdir())}


def list_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


class Lossy(_Directory):
    """A directory destination that silently loses every file named `results.txt`."""

    def put(self, name: str, path: Path) -> None:
        if not name.endswith("results.txt"):
            super().put(name, path)


async def test_backup_restore_retention_and_a_failed_verification(
    backup_fleet_dir: Callable[..., Path],
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "backups"
    backup_fleet_dir(url=f"file://{target}", keep=2)
    hub_root = target / "local" / "staging"
    deployed = await deploy_hub(cluster="local", hub="staging", operator="alice")
    assert deployed.health == "healthy", deployed
    local = local_hub(load_fleet(fleet_dir()), "local", "staging")
    users = Users(deployed.url, _mint_bootstrap_token(local))
    for user in ("ada", "bo"):
        users.serve(user)
    users.write("ada", "results.txt", "ada's results\n")
    users.mkdir("ada", "work")
    users.write("ada", "work/data.txt", "x" * 3000)
    users.write("bo", "notes.txt", "bo's notes\n")

    # A dry run reads the destination and says what it would do; it writes nothing.
    dry = await backup_hub("local", "staging", dry_run=True, operator="ops")
    assert dry.dry_run and "copy 2 home(s) (ada, bo)" in dry.would, dry
    assert not target.exists()

    first = await backup_hub("local", "staging", operator="ops")
    assert first.backed_up and first.users == ["ada", "bo"], first
    assert first.db == ["hub-db/jupyterhub.sqlite"]
    copy = hub_root / first.stamp
    assert (copy / "homes" / "ada" / "results.txt").read_text() == "ada's results\n"
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["files"]["homes/bo/notes.txt"] == len("bo's notes\n")
    assert manifest["objects"] == first.objects == len(manifest["files"])
    # The database copy is a whole sqlite database that knows the users.
    db = sqlite3.connect(copy / "hub-db" / "jupyterhub.sqlite")
    try:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        names = {row[0] for row in db.execute("select name from users")}
    finally:
        db.close()
    assert {"ada", "bo"} <= names

    # Both users lose a file (deleted through their servers).
    users.delete("ada", "results.txt")
    users.delete("bo", "notes.txt")
    assert users.read("ada", "results.txt") is None

    # A dry run of a restore says what it would bring back, and changes nothing.
    before = sorted(str(p) for p in local.homes.rglob("*"))
    dry = await restore_hub("local", "staging", user="ada", dry_run=True, operator="ops")
    assert dry.dry_run and dry.stamp == first.stamp, dry
    (plan,) = dry.plan  # ada's home: her file, and what her server keeps there
    assert plan.user == "ada" and plan.missing_now == ["results.txt"], plan
    assert plan.files == len(list_files(copy / "homes" / "ada")), plan
    assert sorted(str(p) for p in local.homes.rglob("*")) == before

    # One user: ada's file is back (her server sees it), bo's is still gone.
    one = await restore_hub("local", "staging", user="ada", operator="ops")
    assert one.users == ["ada"] and one.files == plan.files, one
    assert users.read("ada", "results.txt") == "ada's results\n"
    assert users.read("bo", "notes.txt") is None
    restored = local.homes / "ada" / "results.txt"
    assert restored.stat().st_uid == (local.homes / "ada").stat().st_uid
    # All users: bo's is back too; a file made since the backup is kept.
    users.write("ada", "new.txt", "made after the backup\n")
    every = await restore_hub("local", "staging", operator="ops")
    assert every.users == ["ada", "bo"], every
    assert users.read("bo", "notes.txt") == "bo's notes\n"
    assert users.read("ada", "new.txt") == "made after the backup\n"
    # A directory of the home replaced by a link out of it: the restore (root, here) will
    # not write through it.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(local.homes / "ada" / "work")
    (local.homes / "ada" / "work").symlink_to(outside)
    with pytest.raises(RestoreRefused, match=r"ada/work is a symbolic link"):
        await restore_hub("local", "staging", user="ada", operator="ops")
    assert list(outside.iterdir()) == []
    (local.homes / "ada" / "work").unlink()
    await restore_hub("local", "staging", user="ada", operator="ops")
    assert users.read("ada", "work/data.txt") == "x" * 3000
    # While another operation holds the hub's lock (a teardown, say), a backup waits, then
    # stops naming the holder, with nothing copied.
    async with hub_lock("local", "staging"):
        with pytest.raises(LockTimeout, match="hub local/staging is busy"):
            await backup_hub("local", "staging", operator="ops", lock_timeout=2)
    assert list(copies_at(hub_root)) == [first.stamp]
    # A user or a copy that is not there: refused, saying what is.
    with pytest.raises(RestoreRefused, match=r"has no home of 'cy' \(homes: ada, bo\)"):
        await restore_hub("local", "staging", user="cy", operator="ops")
    with pytest.raises(RestoreRefused, match=rf"verified copies: {first.stamp}"):
        await restore_hub("local", "staging", stamp="20000101T000000Z", operator="ops")

    # Retention: keep 2. A third backup deletes the first, only after verifying itself.
    second = await backup_hub("local", "staging", operator="ops")
    third = await backup_hub("local", "staging", operator="ops")
    assert third.pruned == [first.stamp], third
    assert copies_at(hub_root) == {second.stamp: True, third.stamp: True}

    # A destination that loses a file: the copy does not verify, the run fails, the two
    # earlier copies stay, and the failed copy has no manifest (never restored from).
    real = backup_tasks.destination
    monkeypatch.setattr(backup_tasks, "destination", lambda url, block=None: Lossy(Path(url[7:])))
    with pytest.raises(BackupFailed, match=r"did not verify \(missing 1: homes/ada/results.txt"):
        await backup_hub("local", "staging", operator="ops")
    monkeypatch.setattr(backup_tasks, "destination", real)
    left = copies_at(hub_root)
    assert [s for s, ok in left.items() if ok] == [second.stamp, third.stamp]
    (failed,) = [s for s, ok in left.items() if not ok]
    async with get_client() as client:  # the newest backup_hub run (the server is shared)
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["backup_hub"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    assert runs[0].name.startswith("backup_hub") and runs[0].state.is_failed()
    # A restore uses only verified copies: the newest is `third`, not the failed one.
    dry = await restore_hub("local", "staging", dry_run=True, operator="ops")
    assert dry.stamp == third.stamp
    # The next good backup verifies, then prunes the oldest copy and the failed leftovers.
    fourth = await backup_hub("local", "staging", operator="ops")
    assert fourth.pruned == sorted([second.stamp, failed])
    assert copies_at(hub_root) == {third.stamp: True, fourth.stamp: True}


async def test_backup_fleet_backs_up_standing_hubs_and_fails_naming_the_failed_one(
    backup_fleet_dir: Callable[..., Path], tmp_path: Path, data_dir: Path
) -> None:
    """The scheduled operation: every standing hub; a hub not deployed is skipped, an
    event hub is not a standing hub; an unknown selection is refused."""
    backup_fleet_dir(url=f"file://{tmp_path / 'backups'}", keep=3)
    await deploy_hub(cluster="local", hub="staging", operator="ops")
    result = await backup_fleet(operator="ops", only=["local"])
    hubs = result.hubs
    assert set(hubs) == {"local/staging", "local/prod"}, hubs  # not the event hub
    assert hubs["local/staging"].backed_up and hubs["local/prod"].reason == "not deployed"
    with pytest.raises(LookupError, match="nosuch is not a cluster"):
        await backup_fleet(operator="ops", only=["nosuch"])


def test_backup_settings_are_validated(backup_fleet_dir: Callable[..., Path]) -> None:
    from hubfleet.loader import FleetInvalid

    root = backup_fleet_dir(keep=0)
    with pytest.raises(FleetInvalid) as info:
        load_fleet(root)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "fleet.yaml" in text and "backup.keep" in text and "greater than or equal to 1" in text
    root = backup_fleet_dir(url="ftp://somewhere/x")
    with pytest.raises(FleetInvalid) as info:
        load_fleet(root)
    assert "backup.url" in str(info.value.problems[0])
    assert load_fleet(backup_fleet_dir()).settings.backup.keep == 7  # the documented default


@pytest.mark.cloud
async def test_backup_to_s3_on_moto_keeps_the_key_out_of_the_history(
    backup_fleet_dir: Callable[..., Path], data_dir: Path, moto_server: Any
) -> None:
    """Through an AwsCredentials block made for the test (a fresh IAM user's key): backup,
    verify, restore one user; the key's secret is in no log, artifact, parameter or file of
    the data dir."""
    from prefect_aws import AwsCredentials

    iam = moto_server.client("iam")
    name = f"backup-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="backup",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    secret = key["SecretAccessKey"]
    await AwsCredentials(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=secret,
        region_name=moto_server.region,
        aws_client_parameters={"endpoint_url": moto_server.endpoint_url},
    ).asave("aws-backup-test", overwrite=True)
    bucket = f"backups-{uuid.uuid4().hex[:8]}"
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=bucket)
    backup_fleet_dir(url=f"s3://{bucket}/hubs", credentials="aws-backup-test", keep=1)

    deployed = await deploy_hub(cluster="local", hub="staging", operator="ops")
    local = local_hub(load_fleet(fleet_dir()), "local", "staging")
    users = Users(deployed.url, _mint_bootstrap_token(local))
    users.serve("cyd")
    users.write("cyd", "data.txt", "x" * 5000)
    first = await backup_hub("local", "staging", operator="ops")
    prefix = f"hubs/local/staging/{first.stamp}/"
    keys = {
        o["Key"].removeprefix(prefix)
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    }
    assert {"homes/cyd/data.txt", "hub-db/jupyterhub.sqlite", MANIFEST} <= keys
    users.delete("cyd", "data.txt")
    await restore_hub("local", "staging", user="cyd", operator="ops")
    assert users.read("cyd", "data.txt") == "x" * 5000
    second = await backup_hub("local", "staging", operator="ops")
    assert second.pruned == [first.stamp]  # keep: 1
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents")

    # Secret hygiene: run logs, artifacts, run parameters, and every file of the data dir.
    found: list[str] = []
    logs: list[Any] = []
    artifacts: list[Any] = []
    async with get_client() as client:
        while page := await client.read_logs(LogFilter(), limit=200, offset=len(logs)):
            logs += page
        while page := await client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts += page
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
    assert logs and artifacts and runs
    found += [f"log {log.flow_run_id}" for log in logs if secret in log.message]
    found += [f"artifact {a.key}" for a in artifacts if secret in json.dumps(a.data)]
    found += [f"run {r.name}" for r in runs if secret in json.dumps(r.parameters, default=str)]
    found += [
        str(p) for p in data_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert found == []


def test_the_cli_runs_the_flows_and_says_plainly_what_is_missing(
    backup_fleet_dir: Callable[..., Path],
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hubfleet backup` / `hubfleet restore` in this process, against the test server."""
    import sys

    from hubfleet.cli import main

    backup_fleet_dir(url=f"file://{tmp_path / 'cli-backups'}")

    def cli(*args: str) -> tuple[int, str]:
        argv, sys.argv = sys.argv, ["hubfleet", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = argv
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, text = cli("backup", "local", "prod", "--dry-run", "--operator", "ops")
    assert code == 0 and "not deployed" in text, text
    code, text = cli("restore", "local", "prod", "--dry-run", "--operator", "ops")
    assert code == 2 and "local/prod: no verified backup at file://" in text, text
    assert "Traceback" not in text


@pytest.mark.cloud
def test_copy_prune_and_restore_on_azure_blob_in_azurite(tmp_path: Path, azurite: Any) -> None:
    """The steps under the flows against Azurite through azure-storage-blob: a copy with a
    sqlite snapshot, retention deleting blobs, a restore downloading them."""
    from azure.storage.blob import BlobServiceClient
    from prefect_azure import AzureBlobStorageCredentials

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"backups-{uuid.uuid4().hex[:8]}"
    service.create_container(container)
    creds = AzureBlobStorageCredentials(connection_string=azurite.connection_string)
    homes = tmp_path / "homes"
    (homes / "ada" / "deep" / "er").mkdir(parents=True)
    (homes / "ada" / "deep" / "er" / "x.csv").write_text("a,b\n1,2\n")
    (homes / "bo").mkdir()
    db = tmp_path / "jupyterhub.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("create table users (name text)")
        conn.execute("insert into users values ('ada')")
    conn.close()
    url = f"az://{container}/hubs/local/staging"
    first = backup_tasks.backup_directory(homes, db, url, "20270101T010000Z", creds)
    second = backup_tasks.backup_directory(homes, db, url, "20270102T010000Z", creds)
    assert first.users == ["ada", "bo"] and first.db == ["hub-db/jupyterhub.sqlite"]
    copies, incomplete = backup_tasks.list_copies(url, creds)
    assert [c.stamp for c in copies] == [first.stamp, second.stamp] and incomplete == {}
    assert backup_tasks.prune(url, creds, keep=1) == [first.stamp]
    names = [b.name for b in service.get_container_client(container).list_blobs()]
    assert names and all(second.stamp in n for n in names), names
    shutil.rmtree(homes / "ada")
    (copy,) = backup_tasks.list_copies(url, creds)[0]
    assert backup_tasks.restore_directory(copy, ["ada"], homes, creds) == 1
    assert (homes / "ada" / "deep" / "er" / "x.csv").read_text() == "a,b\n1,2\n"
