"""The registry's terraform inputs against the modules, module style, and the terraform
tasks' error handling (real terraform; the state lock is held by this test process)."""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fleetfiles import copy_example_fleet

from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.terraform_inputs import INPUT_MODELS, declared_variables, module_dir

REPO = Path(__file__).resolve().parents[2]
DERIVED = {
    "gke": {"cluster_name", "project_id", "region", "zone"},
    "eks": {"cluster_name", "region", "account_id"},
    "aks": {"cluster_name", "resource_group_name", "location"},
    "testing": {"cluster_name"},
}


@pytest.mark.parametrize("module", sorted(INPUT_MODELS))
def test_model_fields_are_the_module_variables(module: str) -> None:
    declared = set(declared_variables(module_dir(module)))
    assert declared == set(INPUT_MODELS[module].model_fields) | DERIVED[module]


def test_modules_are_terraform_fmt_clean(terraform_bin: Path) -> None:
    p = subprocess.run(
        [str(terraform_bin), "fmt", "-check", "-recursive", "-diff", "terraform_modules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    for module in INPUT_MODELS:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (module_dir(module) / name).is_file(), f"{module}/{name}"
        assert (module_dir(module) / "examples" / "basic" / "main.tf").is_file()


def _fleet_with(tmp_path: Path, terraform: str) -> Path:
    root = copy_example_fleet(tmp_path)
    with (root / "clusters" / "gcp-central" / "cluster.yaml").open("a") as f:
        f.write("")
    text = (root / "clusters" / "gcp-central" / "cluster.yaml").read_text()
    head = text[: text.index("terraform:")]
    (root / "clusters" / "gcp-central" / "cluster.yaml").write_text(head + terraform)
    return root


def test_unknown_input_is_named(tmp_path: Path) -> None:
    root = _fleet_with(tmp_path, "terraform:\n  module: gke\n  gke:\n    core_node_cnt: 3\n")
    with pytest.raises(FleetInvalid) as err:
        load_fleet(root)
    [problem] = err.value.problems
    written = (root / "clusters" / "gcp-central" / "cluster.yaml").read_text().splitlines()
    line = written.index("    core_node_cnt: 3") + 1  # the line of the unknown key
    assert str(problem).endswith(
        f"cluster.yaml:{line}: terraform.gke.core_node_cnt: unknown key 'core_node_cnt'; allowed "
        "keys: kubernetes_version, core_node_count, user_pools, core_machine_type, "
        "network_cidr, deletion_protection"
    )


def test_module_mismatch_is_named(tmp_path: Path) -> None:
    root = _fleet_with(tmp_path, "terraform:\n  module: eks\n  gke: {}\n")
    with pytest.raises(FleetInvalid) as err:
        load_fleet(root)
    text = "\n".join(str(p) for p in err.value.problems)
    assert "terraform.gke: inputs for module 'gke', but this cluster's module is 'eks'" in text
    assert "module 'eks' builds aws clusters, but this cluster's provider is 'gcp'" in text


def test_module_without_a_registry_variable_is_named(tmp_path: Path, monkeypatch: Any) -> None:
    """A module whose variables.tf lost a variable the model sets: the variable is named."""
    import hubfleet.terraform_inputs as ti

    fake = tmp_path / "modules"
    shutil.copytree(REPO / "terraform_modules", fake)
    text = (fake / "gke" / "variables.tf").read_text()
    start = text.index('variable "network_cidr"')
    end = text.index('variable "deletion_protection"')
    (fake / "gke" / "variables.tf").write_text(text[:start] + text[end:])
    monkeypatch.setattr(ti, "MODULES_DIR", fake)
    with pytest.raises(FleetInvalid) as err:
        load_fleet(REPO / "fleet")
    assert (
        "terraform.gke.network_cidr: variable 'network_cidr' is not declared by module 'gke'"
        in str(err.value)
    )


async def test_state_lock_is_retried_until_free(lab_fleet: Any, prefect_server: str) -> None:
    from prefect import flow

    from hubfleet.paths import data_dir
    from tasks.terraform import terraform_init, terraform_plan, workspace

    cluster = lab_fleet.name
    lab_fleet()
    from flows.provision_cluster import provision_cluster

    await provision_cluster(cluster, action="apply")
    state = data_dir() / "terraform" / cluster / "terraform.tfstate"

    @flow
    async def plan_while_locked() -> Any:
        from flows.operation import begin_cluster

        op = await begin_cluster("test", cluster, None)
        with workspace(op.cluster, {}) as ws:
            await terraform_init(ws)
            return await terraform_plan.with_options(retries=5, retry_delay_seconds=1)(ws)

    with state.open("r+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)  # what another terraform process holds
        running = asyncio.ensure_future(plan_while_locked(return_state=True))
        await asyncio.sleep(3)
        assert not running.done()
        fcntl.lockf(held, fcntl.LOCK_UN)
    final = await running
    assert final.is_completed()
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[final.state_details.flow_run_id])
            )
        )
    plan_runs = [
        r
        for r in runs
        if r.flow_run_id == final.state_details.flow_run_id and r.name.startswith("terraform_plan")
    ]
    assert plan_runs and plan_runs[0].run_count > 1  # it failed on the lock, then succeeded


async def test_other_errors_are_not_retried(lab_fleet: Any, prefect_server: str) -> None:
    from flows.provision_cluster import provision_cluster
    from tasks.terraform import TerraformError

    cluster = lab_fleet.name
    lab_fleet()
    # A module that does not parse: a plain failure, raised at once, never retried.
    broken = module_dir("testing")
    assert broken.is_dir()
    import hubfleet.terraform_inputs as ti

    fake = Path(str(lab_fleet.root)).parent / "modules"
    shutil.copytree(REPO / "terraform_modules", fake)
    (fake / "testing" / "broken.tf").write_text(
        'resource "terraform_data" "x" {\n  input = var.nope\n}\n'
    )
    old = ti.MODULES_DIR
    ti.MODULES_DIR = fake
    try:
        with pytest.raises(TerraformError, match="undeclared input variable"):
            await provision_cluster(cluster, action="plan")
    finally:
        ti.MODULES_DIR = old
