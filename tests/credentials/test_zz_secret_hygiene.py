"""Secret hygiene after the whole rotation suite (this file runs last in the directory).

Every secret value the rotations held (old, new and rolled-back tokens and keys, recorded by
the `secret_ledger` fixture) must appear in no run log, artifact, flow-run or task-run
parameter, nor in any file under the test temp dirs, the hubs' data dir or the Prefect
server's database directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter

pytestmark = pytest.mark.usefixtures("prefect_server")


#: A local hub's cookie secret lives in this file (its store, 0600, like a Kubernetes
#: Secret): it may hold exactly the current cookie secret, and nothing else.
COOKIE_FILE = "jupyterhub_cookie_secret"


def files_containing(secrets: set[str], root: Path) -> list[str]:
    needles = [s.encode() for s in secrets]
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found = [n for n in needles if n in data]
            if path.name == COOKIE_FILE and found == [data.strip()]:
                continue  # the store holding the one current value
            hits += [f"{path} (a {len(n)}-character secret)" for n in found]
    return hits


async def test_no_secret_in_runs_artifacts_parameters_or_files(
    secret_ledger: set[str], tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> None:
    assert len(secret_ledger) >= 2, "run with the rotation tests: nothing was rotated"
    logs, artifacts, flow_runs, task_runs = [], [], [], []
    async with get_client() as client:
        while page := await client.read_logs(LogFilter(), limit=200, offset=len(logs)):
            logs += page
        while page := await client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts += page
        while page := await client.read_flow_runs(limit=200, offset=len(flow_runs)):
            flow_runs += page
        while page := await client.read_task_runs(limit=200, offset=len(task_runs)):
            task_runs += page
    assert logs and artifacts and flow_runs and task_runs
    assert any(r.name.startswith("rotate_credential ") for r in flow_runs)
    texts = [log.message for log in logs]
    texts += [f"{a.data} {a.description}" for a in artifacts]
    texts += [f"{r.parameters} {r.name} {r.state}" for r in flow_runs]
    texts += [f"{t.task_inputs} {t.name} {t.state}" for t in task_runs]
    leaks = [t[:80] for t in texts for s in secret_ledger if s in t]
    assert leaks == []

    roots = [tmp_path_factory.getbasetemp(), data_dir]
    assert [hit for root in roots for hit in files_containing(secret_ledger, root)] == []


def test_no_secret_readable_without_the_credential(
    prefect_server: str, secret_ledger: set[str], data_dir: Path
) -> None:
    """The server's files are private, and its API gives nothing to a client without the
    credential; with it, the same call does return the stored secrets (so the check can
    fail)."""
    home = data_dir / "prefect"  # the session server (tests/conftest.py)
    for name, mode in [("prefect.db", 0o600), ("api-auth", 0o600), ("block-encryption-key", 0o600)]:
        assert (home / name).stat().st_mode & 0o777 == mode, name
    assert home.stat().st_mode & 0o777 == 0o700
    url = f"{prefect_server}/block_documents/filter"
    for body in ({"include_secrets": True}, {"include_secrets": False}):
        anonymous = requests.post(url, json=body, timeout=30)
        assert anonymous.status_code == 401 and not any(s in anonymous.text for s in secret_ledger)
    user, password = (home / "api-auth").read_text().strip().split(":", 1)
    authorized = requests.post(
        url, json={"include_secrets": True, "limit": 200}, auth=(user, password), timeout=30
    )
    assert authorized.status_code == 200
    assert any(s in authorized.text for s in secret_ledger)
