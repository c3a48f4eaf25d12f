"""Reading what hubs run and store, for `hubfleet usage` (the arithmetic: hubfleet.usage).

- `running_servers`: one hub's running servers, through its REST API with the ops token
  (read-only: `GET /hub/api/users?state=active`); the shallow sweep calls it for every
  hub it reached (flows/check_fleet_health.py).
- `record_usage_samples` / `read_usage_samples`: those samples in the run history, the
  table artifact `usage-samples` (one version per sweep, a row per running server and a
  row per sampled hub), and back.
- `measure_storage`: a local hub's homes on disk; a Kubernetes hub's PVCs (requested size,
  read-only through the cluster's access block; the kubeconfig stays in memory).
- `collect_usage`: all of it for a fleet and a window.

Tokens travel only in Authorization headers; nothing here logs, returns or raises one.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from hubfleet.model import Fleet, Provider
from hubfleet.prices import PriceTable, machine_of, merge_prices, shipped_prices
from hubfleet.usage import HubCosting, Sample, ServerSeen, Storage, Usage, build_usage, gib

SAMPLES_KEY = "usage-samples"
#: Users per page asked of a hub (JupyterHub caps a page at its api_page_max_limit, 200).
PAGE = 200


async def running_servers(
    client: httpx.AsyncClient, url: str, token: str, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Every running (or starting) server of the hub: user, server name, started, profile.

    Read-only. Needs `list:users` and `read:servers`, which the ops role holds."""
    from tasks.probes import acall

    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = (
            await acall(
                client,
                "GET",
                f"{url}/hub/api/users?state=active&offset={offset}&limit={PAGE}",
                token=token,
                timeout=timeout,
            )
        ).json()
        items = page.get("items", []) if isinstance(page, dict) else page
        for user in items:
            for name, server in (user.get("servers") or {}).items():
                if not server.get("started"):
                    continue
                options = server.get("user_options") or {}
                found.append(
                    {
                        "user": str(user["name"]),
                        "server": str(name or ""),
                        "started": str(server["started"]),
                        "profile": str(options["profile"]) if options.get("profile") else "",
                    }
                )
        if len(items) < PAGE:
            return found
        offset += len(items)


def sample_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of one sweep's samples: a row per running server, and a row with an
    empty user for each hub sampled (so an idle hub's sample is kept too)."""
    rows = []
    for result in results:
        if "servers" not in result:
            continue  # not reached, or the sample failed: no sample, not "nothing ran"
        at = result["sampled_at"]
        rows.append({"hub": result["hub"], "at": at, "user": "", "server": "", "started": "",
                     "profile": ""})  # fmt: skip
        rows += [{"hub": result["hub"], "at": at, **s} for s in result["servers"]]
    return rows


async def record_usage_samples(results: list[dict[str, Any]]) -> int:
    """Add this sweep's samples to the run history (a new version of `usage-samples`);
    returns how many hubs were sampled. Nothing is recorded when none was."""
    from prefect.artifacts import acreate_table_artifact

    rows = sample_rows(results)
    hubs = sum(1 for r in rows if not r["user"])
    if hubs:
        servers = len(rows) - hubs
        await acreate_table_artifact(
            key=SAMPLES_KEY,
            table=rows,
            description=f"running servers: {servers} on {hubs} hub(s)",
        )
    return hubs


def samples_from_rows(rows: list[dict[str, Any]]) -> list[Sample]:
    """`usage-samples` rows back into one Sample per hub and time."""
    by_key: dict[tuple[str, str], list[ServerSeen]] = {}
    for row in rows:
        key = (str(row["hub"]), str(row["at"]))
        servers = by_key.setdefault(key, [])
        if row.get("user"):
            servers.append(
                ServerSeen(
                    str(row["user"]),
                    str(row.get("server") or ""),
                    _when(str(row["started"])),
                    str(row.get("profile") or "") or None,
                )
            )
    return [Sample(hub, _when(at), tuple(servers)) for (hub, at), servers in by_key.items()]


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def read_usage_samples(start: datetime) -> list[Sample]:
    """Every sample taken since `start`, from the run history (all versions of the
    `usage-samples` artifact created since then)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    rows: list[dict[str, Any]] = []
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SAMPLES_KEY])),
                offset=offset,
                limit=200,
            )
            for artifact in page:
                if artifact.created is not None and artifact.created < start:
                    continue
                data: Any = artifact.data
                rows += json.loads(data) if isinstance(data, str) else data or []
            if len(page) < 200:
                break
            offset += len(page)
    return [s for s in samples_from_rows(rows) if s.at >= start]


# --- storage -------------------------------------------------------------------------------


def home_bytes(homes: Path) -> int:
    """Bytes in the files under `homes` (their apparent size; links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(homes):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while walking
    return total


def local_storage(fleet: Fleet, cluster: str, hub: str) -> Storage:
    """A local hub's homes: their size on disk is both what it uses and what it holds."""
    from tasks.local_hub import local_hub

    homes = local_hub(fleet, cluster, hub).homes
    if not homes.is_dir():
        return Storage(None, None, "no homes yet")
    size = home_bytes(homes) / 2**30
    return Storage(size, size, "homes on disk")


def pvc_storage(kubeconfig: dict[str, Any], context: str | None, namespace: str) -> Storage:
    """The hub namespace's PVCs (homes and the hub database): the sizes they request,
    which is what a cloud bills. Their use is not in the Kubernetes API (only the kubelet's
    stats have it), so it is reported as unknown. Read-only."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config_dict(kubeconfig, context=context)
    try:
        try:
            pvcs = client.CoreV1Api(api_client).list_namespaced_persistent_volume_claim(
                namespace, _request_timeout=10
            )
        except ApiException as exc:
            if exc.status == 404:
                return Storage(None, None, f"namespace {namespace} not found")
            raise
    finally:
        api_client.close()
    total = 0.0
    for pvc in pvcs.items:
        wants = pvc.spec.resources if pvc.spec else None
        asked = (wants.requests if wants else None) or {}
        if "storage" in asked:
            name = pvc.metadata.name if pvc.metadata else "?"
            total += gib(asked["storage"], f"PVC {namespace}/{name}")
    return Storage(total, None, f"{len(pvcs.items)} PVC(s), requested size")


async def measure_storage(fleet: Fleet, cluster: str, hub: str) -> Storage:
    """One hub's storage now (read-only)."""
    spec = fleet.cluster(cluster)
    if spec.provider is Provider.local:
        return await asyncio.to_thread(local_storage, fleet, cluster, hub)
    import yaml

    from blocks.cluster_access import ClusterAccess

    access = await ClusterAccess.for_cluster(cluster)
    kubeconfig = yaml.safe_load(access.kubeconfig.get_secret_value())
    return await asyncio.to_thread(pvc_storage, kubeconfig, access.context, hub)


# --- prices and requests -------------------------------------------------------------------


def price_table(fleet: Fleet) -> PriceTable:
    """The shipped price table with fleet.yaml's `prices:` on top (checked)."""
    return merge_prices(shipped_prices(), fleet.settings.prices)


def hub_costing(fleet: Fleet, table: PriceTable, cluster: str, hub: str) -> tuple[HubCosting, str]:
    """A hub's per-server requests (its merged values: fleet, cluster, preset, hub files)
    and its prices; plus a note when its cost cannot be estimated ("" otherwise)."""
    from dataclasses import replace

    from hubfleet.layers import merged
    from hubfleet.usage import resources_from_values
    from hubfleet.values import hub_layers

    spec = fleet.cluster(cluster)
    values = merged(hub_layers(fleet, cluster, spec.hub(hub), z2jh_defaults=False))
    # Local hubs do not apply profiles (KubeSpawner's): every server gets singleuser's.
    local = spec.provider is Provider.local
    costing = resources_from_values(values, f"{cluster}/{hub}", profiles=not local)
    pools = (
        {name: pool.machine_type for name, pool in spec.terraform.inputs().user_pools.items()}
        if spec.terraform
        else {}
    )
    provider = spec.provider.value
    prices = table.provider(provider)
    machine, _how = machine_of(table, provider, pools)
    note = ""
    if machine is None:
        note = (
            f"{cluster}/{hub}: cost not estimated: cluster {cluster} ({provider}) names no user "
            f"pool machine type; set prices.{provider}.default_machine in fleet.yaml and price "
            f"it under prices.{provider}.machines"
        )
    elif machine not in prices.machines:
        known = ", ".join(sorted(prices.machines)) or "none"
        note = (
            f"{cluster}/{hub}: cost not estimated: machine type {machine!r} has no price "
            f"(priced for {provider}: {known}); add it to fleet.yaml, e.g. prices: "
            f"{{{provider}: {{machines: {{{machine}: {{hourly: 0.25, cpu: 4, memory_gib: 32}}}}}}}}"
        )
    return (
        replace(
            costing,
            machine=machine,
            price=prices.machines.get(machine) if machine else None,
            storage_gib_month=prices.storage_gib_month,
        ),
        note,
    )


async def collect_usage(
    fleet: Fleet,
    start: datetime,
    end: datetime | None = None,
    *,
    storage: bool = True,
    samples: list[Sample] | None = None,
    only: set[str] | None = None,
) -> Usage:
    """Usage and estimated cost of every hub of the fleet over [start, end]: samples from
    the run history, requests from the hubs' values, storage measured now (unless
    `storage` is False; a hub whose storage cannot be read says why, the rest go on).
    `only`: the cluster/hub names to report (default: every hub of the fleet)."""
    end = end or datetime.now(UTC)
    table = price_table(fleet)
    hubs = {
        f"{c.name}/{h.name}": (h.use_case.value if h.use_case else "none")
        for c in fleet.clusters
        for h in c.hubs
        if only is None or f"{c.name}/{h.name}" in only
    }
    costing: dict[str, HubCosting] = {}
    notes: list[str] = []
    for name in hubs:
        cluster, hub = name.split("/", 1)
        costing[name], note = hub_costing(fleet, table, cluster, hub)
        if note:
            notes.append(note)
    measured: dict[str, Storage] = {}
    if storage:
        for name in hubs:
            cluster, hub = name.split("/", 1)
            try:
                measured[name] = await measure_storage(fleet, cluster, hub)
            except Exception as exc:  # one unreachable cluster never hides the others
                why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                measured[name] = Storage(None, None, f"not measured: {why}")
                notes.append(f"{name}: storage not measured ({why})")
    if samples is None:
        samples = await read_usage_samples(start)
    return build_usage(
        samples,
        start=start,
        end=end,
        hubs=hubs,
        costing=costing,
        storage=measured,
        currency=table.currency,
        notes=notes,
    )
