"""Export the home directories of a Helm-deployed hub: an in-cluster Job, then proof.

On Kubernetes the homes are per-user PVCs in the hub's namespace (KubeSpawner's
`claim-<user>`, labelled `component: singleuser-storage`). Nothing outside the cluster can
read them, so the copy is a Job in that namespace: it mounts every user PVC read-only at
`/homes/<user>`, lists what it sees (`hubfleet-source.json`, rclone's `lsjson` of
`/homes`), copies `/homes` to the bucket with rclone (symlinks skipped, never followed),
and uploads the listing last. Any rclone error fails the pod (the Job retries it, then
fails), so a copy that could not read a file never counts as done. The flow then proves
the copy with its own client (`tasks.export.destination`): every file of the listing is in
the bucket with its size, and every user PVC appears in the listing. Only then is
`hubfleet-export.json` written and the hub may be removed.

The cloud login comes from the same Prefect block as on `local` (`event.export.credentials`)
and reaches the Job only through a Kubernetes Secret created for it (rclone's environment
variables), owned by the Job and deleted with it. Without a block the Job uses the cloud's
own identity for pods (rclone `env_auth`: IRSA, Workload Identity). No secret value is put in
a parameter, a log line, an artifact or the Job spec.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.export import MANIFEST, ExportFailed, ExportResult, _call, destination, verify
from tasks.helm import in_thread
from tasks.kube import _call as kcall

#: Label on the export Job, its pods and its Secret.
EXPORT_LABEL = "hubfleet.io/component"
EXPORT_VALUE = "export"
#: What the Job lists before copying (rclone lsjson of /homes), uploaded after the copy.
SOURCE_LISTING = "hubfleet-source.json"
#: rclone speaks S3, Azure blob and GCS with one CLI and one script. Pinned (never a
#: floating tag): the tests run the Job's script with rclone built at this same version
#: (testenv/versions.toml; a unit test checks they agree).
RCLONE_VERSION = "1.76.0"
RCLONE_IMAGE = f"rclone/rclone:{RCLONE_VERSION}"
#: Where the Job mounts the homes (`/homes/<user>`); the script reads it from $HUBFLEET_HOMES.
HOMES_ROOT = "/homes"
#: KubeSpawner's labels for user PVCs and user server pods.
USER_STORAGE_SELECTOR = "component=singleuser-storage"
USER_SERVER_SELECTOR = "component=singleuser-server"
USERNAME_LABEL = "hub.jupyter.org/username"

#: The container's script: list, copy, then upload the listing (its presence means "done").
SCRIPT = f"""set -eu
listing="$(mktemp)"
trap 'rm -f "$listing"' EXIT
rclone lsjson -R --skip-links "$HUBFLEET_HOMES" > "$listing"
rclone copy --skip-links "$HUBFLEET_HOMES" "$HUBFLEET_EXPORT_REMOTE"
rclone copyto "$listing" "$HUBFLEET_EXPORT_REMOTE/{SOURCE_LISTING}"
"""


@dataclass(frozen=True)
class UserVolume:
    claim: str
    user: str


# --- what is in the namespace ----------------------------------------------------------


def user_volumes(api: client.ApiClient, namespace: str) -> list[UserVolume]:
    """The user home PVCs of a hub namespace (label, or KubeSpawner's `claim-` name)."""
    pvcs: Any = kcall(client.CoreV1Api(api).list_namespaced_persistent_volume_claim, namespace)
    found = []
    for pvc in pvcs.items:
        labels = pvc.metadata.labels or {}
        name = pvc.metadata.name
        if labels.get("component") == "singleuser-storage" or name.startswith("claim-"):
            user = labels.get(USERNAME_LABEL) or name.removeprefix("claim-")
            found.append(UserVolume(name, _dns_safe(user)))
    return sorted(found, key=lambda v: v.user)


def _dns_safe(user: str) -> str:
    # A mount directory and an object prefix; KubeSpawner escapes names the same way.
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in user) or "user"


def stop_user_servers(
    api: client.ApiClient,
    namespace: str,
    timeout: float = 120,
    claims: set[str] | None = None,
) -> list[str]:
    """Delete the user server pods (all, or those that mount one of `claims`), so their
    volumes can be mounted by a Job (a ReadWriteOnce volume attaches to one node): the
    event's export, a restore. Waits until they are gone."""
    core = client.CoreV1Api(api)
    pods: Any = kcall(core.list_namespaced_pod, namespace, label_selector=USER_SERVER_SELECTOR)
    names = [
        p.metadata.name
        for p in pods.items
        if claims is None
        or any(
            v.persistent_volume_claim and v.persistent_volume_claim.claim_name in claims
            for v in p.spec.volumes or []
        )
    ]
    for name in names:
        try:
            kcall(core.delete_namespaced_pod, name, namespace, grace_period_seconds=30)
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while names and time.monotonic() < deadline:
        left: Any = kcall(core.list_namespaced_pod, namespace, label_selector=USER_SERVER_SELECTOR)
        if not {p.metadata.name for p in left.items} & set(names):
            break
        time.sleep(1)
    return names


# --- the Job ----------------------------------------------------------------------------


def rclone_remote(url: str) -> str:
    """`s3://bucket/prefix` -> rclone's on-the-fly remote `:s3:bucket/prefix`."""
    parsed = urlparse(url)
    backend = {"s3": "s3", "az": "azureblob", "gs": "gcs"}.get(parsed.scheme)
    if backend is None:
        raise ExportFailed(
            f"cannot export a Kubernetes hub to {url!r}: use s3://, az:// or gs:// (the Job "
            "runs in the cluster and cannot write to a local directory)"
        )
    return f":{backend}:{parsed.netloc}/{parsed.path.strip('/')}"


def credential_env(url: str, block: Any) -> dict[str, str]:
    """rclone's environment for the export (secret values: only ever put in the Secret)."""
    scheme = urlparse(url).scheme
    env: dict[str, str] = {}
    if scheme == "s3":
        if block is None:
            return {"RCLONE_S3_PROVIDER": "AWS", "RCLONE_S3_ENV_AUTH": "true"}
        params = getattr(block, "aws_client_parameters", None)
        endpoint = getattr(params, "endpoint_url", None) if params else None
        env["RCLONE_S3_PROVIDER"] = "Other" if endpoint else "AWS"
        if endpoint:
            env["RCLONE_S3_ENDPOINT"] = str(endpoint)
            env["RCLONE_S3_FORCE_PATH_STYLE"] = "true"
        if block.aws_access_key_id:
            env["RCLONE_S3_ACCESS_KEY_ID"] = block.aws_access_key_id
        if block.aws_secret_access_key:
            env["RCLONE_S3_SECRET_ACCESS_KEY"] = block.aws_secret_access_key.get_secret_value()
        if getattr(block, "aws_session_token", None):
            env["RCLONE_S3_SESSION_TOKEN"] = block.aws_session_token
        if block.region_name:
            env["RCLONE_S3_REGION"] = block.region_name
        if "RCLONE_S3_ACCESS_KEY_ID" not in env:
            env["RCLONE_S3_ENV_AUTH"] = "true"
        return env
    if scheme == "az":
        if block is None or block.connection_string is None:
            return {"RCLONE_AZUREBLOB_ENV_AUTH": "true"}
        # rclone takes the connection string as is, like azure-storage-blob does in
        # `verify_bucket`: account key or SAS, BlobEndpoint (Azurite, private endpoints) or
        # EndpointSuffix (sovereign clouds) all reach the Job unchanged.
        env["RCLONE_AZUREBLOB_CONNECTION_STRING"] = block.connection_string.get_secret_value()
        return env
    if scheme == "gs":
        info = getattr(block, "service_account_info", None) if block else None
        if info is None:
            return {"RCLONE_GCS_ENV_AUTH": "true", "RCLONE_GCS_BUCKET_POLICY_ONLY": "true"}
        env["RCLONE_GCS_SERVICE_ACCOUNT_CREDENTIALS"] = json.dumps(info.get_secret_value())
        env["RCLONE_GCS_BUCKET_POLICY_ONLY"] = "true"
        return env
    raise ExportFailed(f"cannot export to {url!r}: unknown scheme; use s3, az or gs")


def job_manifest(
    name: str,
    url: str,
    volumes: list[UserVolume],
    secret: str,
    deadline_s: int,
    script: str = SCRIPT,
    read_only: bool = True,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The export Job: every user PVC read-only at /homes/<user>, rclone to the bucket.

    script, read_only, extra_env: another rclone script over the same mounts (a restore
    writes the homes back: tasks/backup.py); the default is the export's.
    """
    labels = {EXPORT_LABEL: EXPORT_VALUE, "app.kubernetes.io/managed-by": "hubfleet"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 2,  # the copy is idempotent: a retried pod redoes it
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": 3600,  # if the flow dies, the Job (and Secret) go
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    # Near where user servers run. Preferred, not required: z2jh itself
                    # only prefers user-purpose nodes by default (matchNodePurpose: prefer),
                    # so a cluster whose nodes lack the label must still run the Job. The
                    # volumes' own node affinity (zonal disks, local volumes) is what places
                    # the pod where they attach.
                    "affinity": {
                        "nodeAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "preference": {
                                        "matchExpressions": [
                                            {
                                                "key": "hub.jupyter.org/node-purpose",
                                                "operator": "In",
                                                "values": ["user"],
                                            },
                                        ]
                                    },
                                },
                            ]
                        }
                    },
                    # z2jh's user-node taint; other taints: the namespace's defaultTolerations
                    # (PodTolerationRestriction), as for any pod of the hub.
                    "tolerations": [
                        {
                            "key": "hub.jupyter.org/dedicated",
                            "operator": "Equal",
                            "value": "user",
                            "effect": "NoSchedule",
                        }
                    ],
                    # jovyan, who owns the files of a Jupyter home.
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100},
                    "containers": [
                        {
                            "name": "export",
                            "image": RCLONE_IMAGE,
                            "command": ["/bin/sh", "-c", script],
                            "env": [
                                {"name": "HUBFLEET_EXPORT_URL", "value": url},
                                {"name": "HUBFLEET_EXPORT_REMOTE", "value": rclone_remote(url)},
                                {"name": "HUBFLEET_HOMES", "value": HOMES_ROOT},
                                {"name": "HOME", "value": "/tmp"},
                                *(
                                    {"name": k, "value": v}
                                    for k, v in sorted((extra_env or {}).items())
                                ),
                            ],
                            "envFrom": [{"secretRef": {"name": secret}}],
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {
                                    "name": v.claim,
                                    "mountPath": f"{HOMES_ROOT}/{v.user}",
                                    "readOnly": read_only,
                                }
                                for v in volumes
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": v.claim,
                            "persistentVolumeClaim": {
                                "claimName": v.claim,
                                "readOnly": read_only,
                            },
                        }
                        for v in volumes
                    ],
                },
            },
        },
    }


def run_job(
    api: client.ApiClient,
    namespace: str,
    name: str,
    url: str,
    volumes: list[UserVolume],
    env: dict[str, str],
    timeout: float,
    poll: float = 2.0,
    script: str = SCRIPT,
    read_only: bool = True,
    extra_env: dict[str, str] | None = None,
) -> str:
    """Create the Job and its Secret, wait for the Job to finish, always delete both.

    Returns how it ended ("succeeded after Ns"); raises `ExportFailed` if the Job failed or
    did not finish within `timeout` seconds.
    """
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    labels = {EXPORT_LABEL: EXPORT_VALUE, "app.kubernetes.io/managed-by": "hubfleet"}
    started = time.monotonic()
    try:
        # The Job first, then its credentials as a Secret the Job owns from the moment it
        # exists: whenever this process dies, Kubernetes removes the Secret with the Job
        # (ttlSecondsAfterFinished), so no credential is ever left behind on the cluster.
        # The Job's pod reads the Secret at start (envFrom); the kubelet retries until it
        # exists.
        job: Any = kcall(
            batch.create_namespaced_job,
            namespace,
            job_manifest(
                name, url, volumes, name, max(60, int(timeout)), script, read_only, extra_env
            ),
        )
        owner = client.V1OwnerReference(
            api_version="batch/v1", kind="Job", name=name, uid=job.metadata.uid
        )
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels, owner_references=[owner]),
            string_data=env or {"HUBFLEET_EXPORT_NO_CREDENTIALS": "true"},
            type="Opaque",
        )
        kcall(core.create_namespaced_secret, namespace, secret)
        while True:
            status: Any = kcall(batch.read_namespaced_job_status, name, namespace).status
            conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
            took = round(time.monotonic() - started)
            if "Complete" in conditions or (status.succeeded or 0) >= 1:
                return f"Job {namespace}/{name} succeeded after {took}s"
            if "Failed" in conditions:
                why = conditions["Failed"]
                raise ExportFailed(
                    f"export Job {namespace}/{name} failed ({why.reason}: {why.message}); "
                    "the hub was not removed. See the Job's pod logs, fix, re-run the expiry."
                )
            if time.monotonic() - started > timeout:
                raise ExportFailed(
                    f"export Job {namespace}/{name} did not finish within {timeout:g}s; the "
                    "hub was not removed. Check the Job's pod (image pull, volume attach), "
                    "then re-run the expiry."
                )
            time.sleep(poll)
    finally:
        _delete_job(api, namespace, name)


def _delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete the Job (its pods in the background) and its Secret; missing is fine."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    for delete in (
        lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
        lambda: core.delete_namespaced_secret(name, namespace),
    ):
        try:
            kcall(delete)
        except ApiException as exc:
            if exc.status != 404:
                raise


# --- the proof -------------------------------------------------------------------------


def check_destination(url: str, block: Any) -> None:
    """Raise `ExportFailed` unless `url`'s bucket/container exists and `block` can list it."""
    dest = _call(url, lambda: destination(url, block))
    _call(url, dest.list)


def verify_bucket(url: str, volumes: list[UserVolume], block: Any) -> ExportResult:
    """Prove the Job's copy with our own client, then write `hubfleet-export.json`.

    The Job's listing must name every user PVC's directory; the bucket must hold every
    file of the listing with its size. Raises `ExportFailed` otherwise.
    """
    dest = _call(url, lambda: destination(url, block))
    raw = _call(url, lambda: dest.get_bytes(SOURCE_LISTING))
    if raw is None:
        raise ExportFailed(
            f"export to {url} did not verify: the Job wrote no {SOURCE_LISTING} (it did not "
            "run to the end); the hub was not removed"
        )
    try:
        entries = json.loads(raw)
        files = {str(e["Path"]): int(e["Size"]) for e in entries if not e.get("IsDir")}
        seen = {str(e["Path"]).split("/", 1)[0] for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportFailed(
            f"export to {url} did not verify: {SOURCE_LISTING} is unreadable ({exc}); "
            "the hub was not removed"
        ) from None
    unseen = sorted(v.user for v in volumes if v.user not in seen)
    if unseen:
        raise ExportFailed(
            f"export to {url} did not verify: the Job did not see the homes of "
            f"{', '.join(unseen[:5])} ({len(unseen)} PVC(s)); the hub was not removed"
        )
    found = _call(url, dest.list)
    found.pop(MANIFEST, None)
    found.pop(SOURCE_LISTING, None)
    verify(url, files, found)
    manifest = {
        "files": files,
        "objects": len(files),
        "bytes": sum(files.values()),
        "volumes": {v.user: v.claim for v in volumes},
    }
    _call(url, lambda: dest.put_bytes(MANIFEST, json.dumps(manifest, indent=2).encode()))
    return ExportResult(url, len(files), sum(files.values()), files)


@task(task_run_name="export-homes-job-{namespace}", cache_policy=NO_CACHE)
async def export_homes_with_job(
    api: client.ApiClient,
    namespace: str,
    url: str,
    credentials: str | None,
    stamp: str,
    timeout: float,
) -> tuple[ExportResult, list[UserVolume]]:
    """Copy the hub's user PVCs to `url` with a Job, and verify the copy.

    Changes: stops user servers (their pods), creates and deletes a Job and its Secret in
    the hub's namespace, writes objects under `url`. The PVCs themselves are untouched.
    Raises `ExportFailed` (the hub must stay) if the Job fails or the copy does not verify.
    """
    from tasks.export import load_credentials

    logger = get_run_logger()
    block = await load_credentials(credentials, url)
    volumes = await in_thread(user_volumes, api, namespace)
    if not volumes:
        logger.info("%s: no user volumes; writing an empty manifest at %s", namespace, url)
        return await in_thread(_empty, url, block), volumes
    # Before anything changes: the bucket must exist and our login must reach it. rclone
    # would create a missing S3 bucket, so a typo in the URL would export somewhere new.
    await in_thread(check_destination, url, block)
    stopped = await in_thread(stop_user_servers, api, namespace)
    if stopped:
        logger.info("%s: stopped %d user server(s) before export", namespace, len(stopped))
    env = credential_env(url, block)
    name = f"hubfleet-export-{stamp.lower()}"
    logger.info(
        "%s: export Job %s copies %d home volume(s) to %s", namespace, name, len(volumes), url
    )
    how = await in_thread(run_job, api, namespace, name, url, volumes, env, timeout)
    logger.info("%s", how)
    result = await in_thread(verify_bucket, url, volumes, block)
    logger.info("exported and verified %s", result.summary())
    return result, volumes


def _empty(url: str, block: Any) -> ExportResult:
    dest = _call(url, lambda: destination(url, block))
    manifest = {"files": {}, "objects": 0, "bytes": 0, "volumes": {}}
    _call(url, lambda: dest.put_bytes(MANIFEST, json.dumps(manifest, indent=2).encode()))
    return ExportResult(url, 0, 0, {})
