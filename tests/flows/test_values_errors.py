"""A flow given broken values fails with the same `file:line` lines as `hubfleet validate`,
before it changes anything (issue 20). Real Prefect server; the hub is never started."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet

from flows.deploy_hub import deploy_hub
from hubfleet.layers import ValuesInvalid

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_server")


async def test_deploy_run_fails_with_the_file_and_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_example_fleet(tmp_path)
    (root / "clusters/local/prod.values.yaml").write_text("jupyterhub:\n  hub: {}\n  hub: {}\n")
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    line = "clusters/local/prod.values.yaml:3: jupyterhub.hub: duplicate key: 'hub' is already set"

    with pytest.raises(ValuesInvalid) as info:
        await deploy_hub(cluster="local", hub="prod")
    assert line in str(info.value)
    assert "Nothing was applied." in str(info.value)

    state = await deploy_hub(cluster="local", hub="prod", dry_run=True, return_state=True)
    assert state.is_failed()
    assert line in (state.message or "")  # what the Prefect UI shows for the run
    assert not (data_dir / "hubs" / "local" / "prod").exists()
