"""Secret hygiene after the whole rotation suite (this file runs last in the directory).

Every secret value the rotations held (old, new and rolled-back tokens and keys, recorded by
the `secret_ledger` fixture) must appear in no run log, artifact, flow-run or task-run
parameter, nor in any file under the test temp dirs, the hubs' data dir or the Prefect
server's database directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

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

    db_dir = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1]).parent
    roots = [tmp_path_factory.getbasetemp(), data_dir, db_dir]
    assert [hit for root in roots for hit in files_containing(secret_ledger, root)] == []
