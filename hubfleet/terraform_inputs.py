"""A cluster's `terraform:` section: typed module inputs and where the state lives.

The registry never hands raw dicts to terraform: each module has a model whose fields are
exactly its variables (minus the ones hubfleet derives from the cluster: its name and
location), and `module_variables` turns a validated `Cluster` into the variables of the
module. `check_against_module` reads the module's `variables.tf` so a model and its module
cannot drift apart unnoticed: a variable set by the registry that the module lacks, or a
required module variable nothing sets, is a validation error naming the variable.

No Prefect in here (see DESIGN.md): this is plain typed Python the loader uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hubfleet.paths import REPO_ROOT

if TYPE_CHECKING:
    from hubfleet.model import Cluster

MODULES_DIR = REPO_ROOT / "terraform_modules"
ModuleName = Literal["gke", "eks", "aks", "testing"]
K8S_MINOR = r"^1\.\d+$"


class _Strict(BaseModel):
    # Same rules as hubfleet.model.Strict (kept separate: model.py imports this module).
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserPool(_Strict):
    """An autoscaling pool for user servers (labelled and tainted for user pods only)."""

    machine_type: str = Field(description="Machine/instance/VM size, e.g. n2-highmem-4.")
    min_nodes: int = Field(0, ge=0, le=1000, description="Fewest nodes (0: scale to zero).")
    max_nodes: int = Field(ge=1, le=1000, description="Most nodes the autoscaler may add.")

    @model_validator(mode="after")
    def _bounds(self) -> UserPool:
        if self.max_nodes < self.min_nodes:
            raise ValueError(
                f"max_nodes ({self.max_nodes}) is below min_nodes ({self.min_nodes}); "
                "raise max_nodes or lower min_nodes"
            )
        return self


class _ClusterInputs(_Strict):
    kubernetes_version: str = Field(
        "1.30", pattern=K8S_MINOR, description="Kubernetes minor version, e.g. 1.30."
    )
    core_node_count: int = Field(1, ge=1, le=10, description="Nodes in the core pool.")
    user_pools: dict[str, UserPool] = Field(
        default_factory=dict, description="Autoscaling user node pools by name."
    )


class GkeInputs(_ClusterInputs):
    """Inputs of terraform_modules/gke (project, region, zone come from `gcp:`)."""

    core_machine_type: str = Field("n2-standard-2", description="Machine type of core nodes.")
    network_cidr: str = Field("10.10.0.0/20", description="Primary range of the subnet.")
    deletion_protection: bool = Field(True, description="Refuse to delete the cluster.")


class EksInputs(_ClusterInputs):
    """Inputs of terraform_modules/eks (region comes from `aws:`)."""

    core_instance_type: str = Field("m6i.large", description="EC2 type of core nodes.")
    vpc_cidr: str = Field("10.20.0.0/16", description="CIDR of the cluster's VPC.")
    deploy_eks: bool = Field(
        True,
        description="Create the EKS control plane and node groups; false creates only the "
        "network, IAM and bucket (what moto can emulate).",
    )


class AksInputs(_ClusterInputs):
    """Inputs of terraform_modules/aks (resource group, location come from `azure:`)."""

    core_vm_size: str = Field("Standard_D2s_v5", description="VM size of core nodes.")
    vnet_cidr: str = Field("10.30.0.0/16", description="Address space of the VNet.")


class TestingInputs(_ClusterInputs):
    """Inputs of terraform_modules/testing (built-in terraform_data only; for tests)."""

    location: Literal["lab-1", "lab-2", "lab-3"] = Field(
        "lab-1", description="Changing it replaces the stand-in cluster."
    )


class StateBackend(_Strict):
    """Where the cluster's terraform state lives (a bucket of its provider, or local)."""

    type: Literal["local", "gcs", "s3", "azurerm"] = Field(
        "local", description="local (a file under the data dir), gcs, s3 or azurerm."
    )
    bucket: str | None = Field(None, description="gcs/s3: the state bucket.")
    prefix: str | None = Field(None, description="Key prefix; default hubfleet/<cluster>.")
    region: str | None = Field(None, description="s3: bucket region; default aws.region.")
    endpoint: str | None = Field(None, description="s3: custom endpoint (moto, MinIO).")
    storage_account: str | None = Field(None, description="azurerm: storage account.")
    container: str | None = Field(None, description="azurerm: blob container.")
    resource_group: str | None = Field(None, description="azurerm: the account's group.")

    @model_validator(mode="after")
    def _required(self) -> StateBackend:
        need = {
            "local": [],
            "gcs": ["bucket"],
            "s3": ["bucket"],
            "azurerm": ["storage_account", "container", "resource_group"],
        }[self.type]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"state type {self.type!r} needs {', '.join(missing)}; add them")
        return self


INPUT_MODELS: dict[str, type[_ClusterInputs]] = {
    "gke": GkeInputs,
    "eks": EksInputs,
    "aks": AksInputs,
    "testing": TestingInputs,
}


class TerraformSettings(_Strict):
    """`terraform:` in cluster.yaml: which module builds the cluster, its inputs, its state."""

    module: ModuleName = Field(description="Module in terraform_modules/: gke, eks, aks, testing.")
    state: StateBackend = Field(default_factory=StateBackend, description="State backend.")
    credentials_block: str | None = Field(
        None,
        description="Name of the provider's credentials block (GcpCredentials, "
        "AwsCredentials, AzureContainerInstanceCredentials); default: the cluster name.",
    )
    gke: GkeInputs | None = None
    eks: EksInputs | None = None
    aks: AksInputs | None = None
    testing: TestingInputs | None = None

    def inputs(self) -> _ClusterInputs:
        """The module's typed inputs (defaults when the section is omitted)."""
        given = getattr(self, self.module)
        return given if given is not None else INPUT_MODELS[self.module]()


def module_dir(module: str) -> Path:
    return MODULES_DIR / module


def module_variables(cluster: Cluster) -> dict[str, Any]:
    """The variables handed to the cluster's module (its `*.auto.tfvars.json`)."""
    tf = cluster.terraform
    if tf is None:
        raise ValueError(f"cluster {cluster.name!r} has no terraform section")
    variables: dict[str, Any] = {"cluster_name": cluster.name}
    if tf.module == "gke" and cluster.gcp:
        variables |= {"project_id": cluster.gcp.project, "region": cluster.gcp.region}
        variables["zone"] = cluster.gcp.zone
    elif tf.module == "eks" and cluster.aws:
        variables |= {"region": cluster.aws.region, "account_id": cluster.aws.account_id}
    elif tf.module == "aks" and cluster.azure:
        variables |= {
            "resource_group_name": cluster.azure.resource_group,
            "location": cluster.azure.location,
        }
    variables |= tf.inputs().model_dump(mode="json")
    return variables


# --- the module's own declaration of its variables --------------------------------------

_VARIABLE = re.compile(r'^variable\s+"([A-Za-z_][A-Za-z0-9_-]*)"\s*\{', re.MULTILINE)


def _block_body(text: str, start: int) -> str:
    """Text of the `{...}` block opening at `start`, skipping strings and comments."""
    depth, i, in_string = 0, start, False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    return text[start:]


def declared_variables(directory: Path) -> dict[str, bool]:
    """Variables declared by the module in `directory`: name -> required (no default)."""
    found: dict[str, bool] = {}
    for path in sorted(directory.glob("*.tf")):
        text = path.read_text(encoding="utf-8")
        for match in _VARIABLE.finditer(text):
            body = _block_body(text, match.end() - 1)
            # Only a top-level `default` counts, not one inside a nested block.
            top = re.sub(r"\{[^{}]*\}", "", body[1:-1])
            found[match.group(1)] = re.search(r"^\s*default\s*=", top, re.MULTILINE) is None
    return found


Loc = tuple[str | int, ...]


def check_against_module(cluster: Cluster) -> list[tuple[Loc, str]]:
    """Problems (location in cluster.yaml, message) between the registry and the module."""
    tf = cluster.terraform
    if tf is None:
        return []
    problems: list[tuple[Loc, str]] = []
    for other in INPUT_MODELS:
        if other != tf.module and getattr(tf, other) is not None:
            problems.append(
                (
                    ("terraform", other),
                    f"inputs for module {other!r}, but this cluster's module is "
                    f"{tf.module!r}; rename the section to '{tf.module}:' or remove it",
                )
            )
    builds = {"gke": "gcp", "eks": "aws", "aks": "azure"}.get(tf.module)
    if builds and cluster.provider.value != builds:
        problems.append(
            (
                ("terraform", "module"),
                f"module {tf.module!r} builds {builds} clusters, but this cluster's provider "
                f"is {cluster.provider.value!r}; use the module of its provider (gcp: gke, "
                "aws: eks, azure: aks) or 'testing'",
            )
        )
        return problems
    if builds and getattr(cluster, builds) is None:
        return problems  # the missing provider section is reported on its own
    directory = module_dir(tf.module)
    declared = declared_variables(directory)
    if not declared:
        return [(("terraform", "module"), f"no variables found in {directory}; is it a module?")]
    given = module_variables(cluster)
    for name in given:
        if name not in declared:
            loc: Loc = ("terraform", tf.module, name)
            problems.append(
                (
                    loc,
                    f"variable {name!r} is not declared by module {tf.module!r} "
                    f"(terraform_modules/{tf.module}/variables.tf); declared: "
                    f"{', '.join(sorted(declared))}",
                )
            )
    for name, required in declared.items():
        if required and given.get(name) is None:
            problems.append(
                (
                    ("terraform", tf.module),
                    f"module {tf.module!r} requires variable {name!r}, which this cluster "
                    "does not set; add it",
                )
            )
    return problems
