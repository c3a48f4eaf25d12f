"""One cluster session per operation, made in one place.

The cluster's access block, its kubeconfig in a 0600 temp file (removed afterwards), a helm
whose output and errors are scrubbed of the kubeconfig and of every secret the caller
passes (a hub's secret values), and a Kubernetes API client on the same kubeconfig.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.cluster_access import ClusterAccess, kubeconfig_file
from tasks import helm as helm_tasks
from tasks import kube


@dataclass(frozen=True)
class ClusterSession:
    access: ClusterAccess
    kubeconfig: Path
    helm: helm_tasks.Helm
    api: Any  # kubernetes.client.ApiClient


@asynccontextmanager
async def cluster_session(
    cluster: str, secrets: Sequence[str] = ()
) -> AsyncIterator[ClusterSession]:
    """Open a session on `cluster`; `secrets` are scrubbed from helm's output too."""
    access = await ClusterAccess.for_cluster(cluster)
    scrub = [*secrets, access.kubeconfig.get_secret_value()]
    with (
        kubeconfig_file(access) as kubeconfig,
        helm_tasks.helm_for(kubeconfig, access.context, scrub) as helm,
        kube.kube_client(kubeconfig, access.context) as api,
    ):
        yield ClusterSession(access, kubeconfig, helm, api)
