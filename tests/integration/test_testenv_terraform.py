"""Proof that terraform (or OpenTofu) runs the full init/plan/apply/output/destroy cycle
offline, with a module that uses only the built-in terraform_data resource."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

MAIN_TF = """\
variable "hub_name" {
  type = string
}

resource "terraform_data" "hub" {
  input = {
    name   = var.hub_name
    domain = "${var.hub_name}.hubs.example.org"
  }
}

resource "terraform_data" "dns" {
  input            = terraform_data.hub.output.domain
  triggers_replace = [terraform_data.hub.output.name]
}

output "hub_domain" {
  value = terraform_data.dns.output
}
"""


@pytest.fixture
def tf(terraform_bin, tmp_path):
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(MAIN_TF)
    # No network: no update checks; keep plugin/data dirs inside the test's tmp dir.
    env = dict(
        os.environ,
        CHECKPOINT_DISABLE="1",
        TF_IN_AUTOMATION="1",
        TF_DATA_DIR=str(tmp_path / "tf-data"),
        TF_CLI_CONFIG_FILE=str(tmp_path / "none.tfrc"),
    )
    (tmp_path / "none.tfrc").write_text("")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [str(terraform_bin), *args],
            cwd=module,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"{Path(terraform_bin).name} {' '.join(args)} failed ({p.returncode}):\n"
                f"{p.stdout}\n{p.stderr}"
            )
        return p

    run.module = module
    return run


def test_terraform_data_module_lifecycle(tf):
    tf("init", "-input=false", "-no-color")

    # -detailed-exitcode: 2 means "changes to apply" (what drift detection relies on).
    plan = tf(
        "plan",
        "-input=false",
        "-no-color",
        "-var",
        "hub_name=staging",
        "-out=tfplan",
        "-detailed-exitcode",
        check=False,
    )
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "2 to add, 0 to change, 0 to destroy" in plan.stdout

    tf("apply", "-input=false", "-no-color", "-auto-approve", "tfplan")
    out = json.loads(tf("output", "-json").stdout)
    assert out["hub_domain"]["value"] == "staging.hubs.example.org"
    state = json.loads(tf("show", "-json").stdout)
    assert {r["address"] for r in state["values"]["root_module"]["resources"]} == {
        "terraform_data.hub",
        "terraform_data.dns",
    }

    # Same inputs: no changes. A renamed hub: the DNS record is replaced.
    same = tf(
        "plan",
        "-input=false",
        "-no-color",
        "-var",
        "hub_name=staging",
        "-detailed-exitcode",
        check=False,
    )
    assert same.returncode == 0, same.stdout + same.stderr
    renamed = tf(
        "plan",
        "-input=false",
        "-no-color",
        "-var",
        "hub_name=prod",
        "-detailed-exitcode",
        check=False,
    )
    assert renamed.returncode == 2
    assert "must be replaced" in renamed.stdout

    tf("destroy", "-input=false", "-no-color", "-auto-approve", "-var", "hub_name=staging")
    assert json.loads(tf("output", "-json").stdout) == {}
    state = json.loads(tf("show", "-json").stdout)
    assert not state.get("values", {}).get("root_module", {}).get("resources")


def test_terraform_rejects_invalid_module(tf):
    (tf.module / "main.tf").write_text(
        MAIN_TF + '\nresource "terraform_data" "broken" {\n  input = var.nope\n}\n'
    )
    tf("init", "-input=false", "-no-color")
    p = tf("validate", "-no-color", check=False)
    assert p.returncode != 0
    assert "undeclared input variable" in (p.stdout + p.stderr).lower()
