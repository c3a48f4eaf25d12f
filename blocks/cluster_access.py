"""How hubfleet reaches a Kubernetes cluster: a kubeconfig kept in a Prefect block.

The block's name is the cluster's name (`ClusterAccess.load("gcp-central")`). Whoever
creates the cluster (`provision_cluster`, or an operator for a `kubeconfig` cluster)
stores it; helm and the kubernetes client read it through `kubeconfig_file`, which writes
the kubeconfig to a private temp file only for as long as it is needed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from hubfleet.errors import ProviderNotReady


class ClusterAccessMissing(ProviderNotReady):
    """No `ClusterAccess` block is stored for a cluster; nothing was changed."""


#: Set by a fleet run (`tasks.cluster_session.fleet_block_snapshot`): the cluster access
#: blocks loaded so far in it, so its hundreds of hub runs read each cluster's once.
loaded_access: ContextVar[dict[str, ClusterAccess] | None] = ContextVar(
    "hubfleet_loaded_access", default=None
)


class ClusterAccess(Block):
    """Credentials and endpoint of one Kubernetes cluster (block name = cluster name)."""

    _block_type_name = "Cluster Access"
    _block_type_slug = "hubfleet-cluster-access"
    _description = "Kubeconfig, context and API server of one hubfleet Kubernetes cluster."

    kubeconfig: SecretStr = Field(
        description="A complete kubeconfig (YAML or JSON) with credentials for the cluster."
    )
    context: str = Field(description="The kubeconfig context hubfleet uses.")
    server: str = Field(description="API server URL, for display and sanity checks.")

    @classmethod
    async def for_cluster(cls, cluster: str) -> ClusterAccess:
        """Load the block named after `cluster`, or explain how to create it."""
        cache = loaded_access.get()
        if cache is not None and cluster in cache:
            return cache[cluster]
        try:
            loaded = await cls.aload(cluster)
        except ValueError:
            raise ClusterAccessMissing(
                f"no cluster access stored for cluster {cluster!r}: create a "
                f"'{cls._block_type_slug}' block named {cluster!r} (provision_cluster does "
                "this after apply; for a kubeconfig cluster store it with "
                "ClusterAccess(kubeconfig=..., context=..., server=...).save"
                f"({cluster!r})). Nothing was changed."
            ) from None
        assert isinstance(loaded, cls)
        if cache is not None:
            cache[cluster] = loaded
        return loaded


@contextmanager
def kubeconfig_file(access: ClusterAccess) -> Iterator[Path]:
    """Write the kubeconfig to a 0600 temp file, yield its path, always remove it."""
    fd, name = tempfile.mkstemp(prefix="hubfleet-kubeconfig-", suffix=".yaml")
    path = Path(name)
    try:
        # mkstemp creates the file 0600 already; chmod again in case of an odd umask policy.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(access.kubeconfig.get_secret_value())
        yield path
    finally:
        path.unlink(missing_ok=True)
