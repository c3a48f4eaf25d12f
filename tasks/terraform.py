"""Terraform (or OpenTofu) as Prefect tasks: init, plan, show, apply, output, drift.

Every run works in a fresh directory (`<data dir>/terraform/<cluster>/runs/<id>`) holding
a copy of the cluster's module, a backend file and the registry's variables as
`hubfleet.auto.tfvars.json`. The directory is removed when the run ends, because a saved
plan holds sensitive values in clear text. State lives in the backend the registry names:
a bucket of the provider, or for `local` a file under the data dir.

Credentials reach terraform only through its environment (never argv, files or logs).
State-lock errors are transient (another run holds the lock) and are retried with backoff;
every other failure is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, SecretStr

from hubfleet.errors import HubfleetError
from hubfleet.model import Cluster
from hubfleet.paths import data_dir
from hubfleet.results import PlanSummary
from hubfleet.terraform_inputs import module_dir, module_variables
from tasks.retry import TransientError, transient_retries

PLAN_FILE = "hubfleet.tfplan"
#: Seconds a command may take. Creating a real GKE/EKS/AKS cluster takes 10-20 minutes.
TIMEOUTS = {"init": 300, "plan": 900, "apply": 3600, "show": 120, "output": 120}


class TerraformError(HubfleetError):
    """A terraform command failed for a reason retrying will not fix; see its message."""


class StateLocked(TransientError):
    """Another run holds the state lock; retried with backoff."""


def terraform_binary() -> str:
    """`$HUBFLEET_TERRAFORM`, else `terraform`, else `tofu` on PATH."""
    given = os.environ.get("HUBFLEET_TERRAFORM")
    if given:
        return given
    for name in ("terraform", "tofu"):
        found = shutil.which(name)
        if found:
            return found
    raise TerraformError(
        "neither terraform nor tofu is on PATH; install one (>= 1.4) or set "
        "HUBFLEET_TERRAFORM to its path. Nothing was changed."
    )


@dataclass
class Workspace:
    """One run's working directory for one cluster, and the environment terraform gets."""

    cluster: str
    directory: Path
    env: dict[str, str] = field(repr=False)


def _hcl(value: Any) -> str:
    """A backend setting as HCL (json.dumps is valid HCL for strings, bools, maps)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_hcl(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def backend_settings(cluster: Cluster) -> tuple[str, dict[str, Any]]:
    """(backend type, its settings) for the cluster's state; no credentials in here."""
    assert cluster.terraform is not None
    state = cluster.terraform.state
    prefix = state.prefix or f"hubfleet/{cluster.name}"
    if state.type == "local":
        path = data_dir() / "terraform" / cluster.name / "terraform.tfstate"
        return "local", {"path": str(path)}
    if state.type == "gcs":
        return "gcs", {"bucket": state.bucket, "prefix": prefix}
    if state.type == "s3":
        region = state.region or (cluster.aws.region if cluster.aws else None) or "us-east-1"
        settings: dict[str, Any] = {
            "bucket": state.bucket,
            "key": f"{prefix}/terraform.tfstate",
            "region": region,
            # S3-native locking (terraform >= 1.10): no DynamoDB table to manage.
            "use_lockfile": True,
        }
        if state.endpoint:  # moto or MinIO: path-style, and no real AWS account checks
            settings |= {
                "endpoints": {"s3": state.endpoint, "sts": state.endpoint, "iam": state.endpoint},
                "use_path_style": True,
                "skip_credentials_validation": True,
                "skip_requesting_account_id": True,
                "skip_metadata_api_check": True,
                "skip_region_validation": True,
            }
        return "s3", settings
    return "azurerm", {
        "storage_account_name": state.storage_account,
        "container_name": state.container,
        "resource_group_name": state.resource_group,
        "key": f"{prefix}/terraform.tfstate",
    }


@contextmanager
def workspace(cluster: Cluster, credentials_env: dict[str, str]) -> Iterator[Workspace]:
    """Create a private run directory for `cluster`'s module; always remove it after."""
    assert cluster.terraform is not None
    root = data_dir() / "terraform" / cluster.name
    directory = root / "runs" / uuid.uuid4().hex[:12]
    directory.mkdir(parents=True, mode=0o700)
    os.chmod(root, 0o700)
    try:
        for source in module_dir(cluster.terraform.module).glob("*.tf"):
            shutil.copy(source, directory / source.name)
        kind, settings = backend_settings(cluster)
        if kind == "local":
            Path(settings["path"]).parent.mkdir(parents=True, exist_ok=True)
        (directory / "hubfleet_backend.tf").write_text(
            f'terraform {{\n  backend "{kind}" {{}}\n}}\n', encoding="utf-8"
        )
        (directory / "backend.hcl").write_text(
            "".join(f"{k} = {_hcl(v)}\n" for k, v in settings.items()), encoding="utf-8"
        )
        (directory / "hubfleet.auto.tfvars.json").write_text(
            json.dumps(module_variables(cluster), indent=2), encoding="utf-8"
        )
        env = dict(os.environ)
        env |= {"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
        env |= credentials_env
        yield Workspace(cluster.name, directory, env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def run_terraform(
    ws: Workspace, command: str, *args: str, ok: tuple[int, ...] = (0,)
) -> tuple[int, str]:
    """Run `terraform <command> <args>` in the workspace; return (exit code, stdout).

    Kills the process (by its PID, with its process group) when it overruns its timeout.
    Raises StateLocked for a held state lock, TerraformError for any other failure.
    """
    timeout = TIMEOUTS.get(command, 600)
    proc = await asyncio.create_subprocess_exec(
        terraform_binary(),
        command,
        "-no-color",
        *args,
        cwd=ws.directory,
        env=ws.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so providers die with it
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.CancelledError:
        _kill(proc.pid)
        await proc.wait()
        raise
    except TimeoutError:
        _kill(proc.pid)
        await proc.wait()
        raise TerraformError(
            f"terraform {command} for cluster {ws.cluster!r} did not finish in {timeout}s "
            "and was stopped; check the provider's API status and run again"
        ) from None
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    code = proc.returncode if proc.returncode is not None else -1
    if code in ok:
        return code, stdout
    detail = (stderr.strip() or stdout.strip())[-3000:]
    if "Error acquiring the state lock" in stderr:
        raise StateLocked(
            f"terraform {command} for cluster {ws.cluster!r}: the state is locked by another "
            f"run; will retry.\n{detail}"
        )
    raise TerraformError(f"terraform {command} for cluster {ws.cluster!r} failed:\n{detail}")


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- what a plan changes ----------------------------------------------------------------


def summarize_plan(cluster: str, plan: dict[str, Any]) -> PlanSummary:
    """Summarize `terraform show -json <plan>` output."""
    summary = PlanSummary(cluster=cluster)
    for change in plan.get("resource_changes", []):
        actions = change.get("change", {}).get("actions", [])
        address = change["address"]
        if actions in (["delete", "create"], ["create", "delete"]):
            summary.replace.append(address)
        elif actions == ["create"]:
            summary.create.append(address)
        elif actions == ["update"]:
            summary.update.append(address)
        elif actions == ["delete"]:
            summary.destroy.append(address)
    summary.drifted = [d["address"] for d in plan.get("resource_drift", [])]
    return summary


# --- the tasks --------------------------------------------------------------------------


@task(name="terraform_init", cache_policy=NO_CACHE, **transient_retries(retries=4, backoff=2.0))
async def terraform_init(ws: Workspace) -> None:
    """Initialise the run directory: backend (state location) and provider plugins."""
    await run_terraform(ws, "init", "-input=false", "-backend-config=backend.hcl")


@task(name="terraform_plan", cache_policy=NO_CACHE, **transient_retries(retries=4, backoff=2.0))
async def terraform_plan(ws: Workspace, destroy: bool = False) -> PlanSummary:
    """Write a saved plan (`-out`) and summarize it. Changes nothing outside the run dir.

    `-detailed-exitcode` distinguishes "no changes" (0) from "changes" (2).
    """
    args = ["-input=false", "-detailed-exitcode", f"-out={PLAN_FILE}"]
    if destroy:
        args.append("-destroy")
    await run_terraform(ws, "plan", *args, ok=(0, 2))
    _, shown = await run_terraform(ws, "show", "-json", PLAN_FILE)
    summary = summarize_plan(ws.cluster, json.loads(shown))
    get_run_logger().info("plan for %s: %s", ws.cluster, summary.counts())
    return summary


@task(name="terraform_apply", cache_policy=NO_CACHE, **transient_retries(retries=4, backoff=2.0))
async def terraform_apply(ws: Workspace) -> None:
    """Apply the saved plan, and only it: creates, changes or destroys cloud resources.

    A plan made stale by another apply is refused by terraform, never re-planned here.
    """
    await run_terraform(ws, "apply", "-input=false", "-auto-approve", PLAN_FILE)
    get_run_logger().info("applied the saved plan for %s", ws.cluster)


class TerraformOutputs(BaseModel):
    """A cluster module's outputs; sensitive ones only as SecretStr."""

    public: dict[str, Any]
    sensitive: dict[str, SecretStr]

    def __repr__(self) -> str:  # a repr in a log line shows no values at all
        return f"TerraformOutputs(public={sorted(self.public)}, sensitive={sorted(self.sensitive)})"


@task(name="terraform_outputs", cache_policy=NO_CACHE)
async def terraform_outputs(ws: Workspace) -> TerraformOutputs:
    """Read the outputs from state (reads only). Sensitive values are wrapped, never logged."""
    _, text = await run_terraform(ws, "output", "-json")
    raw = json.loads(text)
    public = {k: v["value"] for k, v in raw.items() if not v.get("sensitive")}
    secret = {
        k: SecretStr(v["value"] if isinstance(v["value"], str) else json.dumps(v["value"]))
        for k, v in raw.items()
        if v.get("sensitive")
    }
    get_run_logger().info(
        "outputs of %s: %s (sensitive, kept in blocks only: %s)",
        ws.cluster,
        ", ".join(sorted(public)) or "none",
        ", ".join(sorted(secret)) or "none",
    )
    return TerraformOutputs(public=public, sensitive=secret)
