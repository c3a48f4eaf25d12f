"""Export an event hub's home directories, then prove the copy is whole.

Destinations by URL scheme: `file:///dir` (a local directory), `s3://bucket/prefix`
(boto3), `az://container/prefix` (azure-storage-blob), `gs://bucket/prefix`
(google-cloud-storage). Every regular file under the homes directory becomes one object
named by its path relative to it; symlinks are not followed (they could point outside the
hub). After upload the destination is listed and compared with the source: the same
objects, each of the same size, or the export fails and nothing downstream may remove the
hub. A `hubfleet-export.json` manifest (paths and sizes, no secrets) is written last.

Cloud logins come from a Prefect block named in the fleet (`event.export.credentials`):
prefect-aws `AwsCredentials`, prefect-azure `AzureBlobStorageCredentials` (its connection
string) or prefect-gcp `GcpCredentials`; without one, each SDK's own credential chain is
used. Credentials never appear in messages, logs or the manifest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from hubfleet.errors import HubfleetError
from tasks.retry import TransientError, transient_retries

MANIFEST = "hubfleet-export.json"


class ExportFailed(HubfleetError):
    """The export did not complete or did not verify; the hub must not be removed."""


@dataclass(frozen=True)
class ExportResult:
    """What was exported where, as verified by listing the destination."""

    url: str
    objects: int
    bytes: int
    files: dict[str, int]  # relative path -> size

    def summary(self) -> str:
        return f"{self.objects} object(s), {self.bytes} bytes at {self.url}"


def source_files(homes: Path) -> dict[str, int]:
    """Regular files under `homes` (not following symlinks): relative path -> size."""
    files: dict[str, int] = {}
    if not homes.is_dir():
        return files
    for root, dirs, names in os.walk(homes, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(homes).as_posix()] = path.stat().st_size
    return files


# --- destinations -----------------------------------------------------------------------


class _Destination:
    """Upload files under a prefix and list what is there."""

    def put(self, name: str, path: Path) -> None:
        raise NotImplementedError

    def put_bytes(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def list(self) -> dict[str, int]:
        raise NotImplementedError

    def get_bytes(self, name: str) -> bytes | None:
        """The object `name` under the prefix, or None if there is none."""
        raise NotImplementedError


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _strip(prefix: str, key: str) -> str:
    return key[len(prefix) + 1 :] if prefix else key


class _Directory(_Destination):
    def __init__(self, root: Path):
        self.root = root

    def put(self, name: str, path: Path) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def put_bytes(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)

    def list(self) -> dict[str, int]:
        return source_files(self.root)

    def get_bytes(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None


class _S3(_Destination):
    def __init__(self, client: Any, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def put(self, name: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, _join(self.prefix, name))

    def put_bytes(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=_join(self.prefix, name), Body=data)

    def list(self) -> dict[str, int]:
        found: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
        )
        for page in pages:
            for obj in page.get("Contents", []):
                found[_strip(self.prefix, obj["Key"])] = int(obj["Size"])
        return found

    def get_bytes(self, name: str) -> bytes | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=_join(self.prefix, name))
        except self.client.exceptions.NoSuchKey:
            return None
        return bytes(got["Body"].read())


class _AzureBlob(_Destination):
    def __init__(self, container: Any, prefix: str):
        self.container, self.prefix = container, prefix

    def put(self, name: str, path: Path) -> None:
        with path.open("rb") as data:
            self.container.upload_blob(_join(self.prefix, name), data, overwrite=True)

    def put_bytes(self, name: str, data: bytes) -> None:
        self.container.upload_blob(_join(self.prefix, name), data, overwrite=True)

    def list(self) -> dict[str, int]:
        starts = f"{self.prefix}/" if self.prefix else None
        return {
            _strip(self.prefix, b.name): int(b.size)
            for b in self.container.list_blobs(name_starts_with=starts)
        }

    def get_bytes(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self.container.download_blob(_join(self.prefix, name)).readall())
        except ResourceNotFoundError:
            return None


class _Gcs(_Destination):
    def __init__(self, client: Any, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, client.bucket(bucket), prefix

    def put(self, name: str, path: Path) -> None:
        self.bucket.blob(_join(self.prefix, name)).upload_from_filename(str(path))

    def put_bytes(self, name: str, data: bytes) -> None:
        self.bucket.blob(_join(self.prefix, name)).upload_from_string(data)

    def list(self) -> dict[str, int]:
        starts = f"{self.prefix}/" if self.prefix else None
        return {
            _strip(self.prefix, b.name): int(b.size)
            for b in self.client.list_blobs(self.bucket, prefix=starts)
        }

    def get_bytes(self, name: str) -> bytes | None:
        blob = self.bucket.blob(_join(self.prefix, name))
        return bytes(blob.download_as_bytes()) if blob.exists() else None


def destination(url: str, credentials: Any = None) -> _Destination:
    """The destination of `url`, logged in with `credentials` (a loaded block) if given."""
    parsed = urlparse(url)
    prefix = parsed.path.strip("/")
    if parsed.scheme == "file":
        return _Directory(Path(parsed.path))
    if parsed.scheme == "s3":
        if credentials is not None:
            client = credentials.get_client("s3")
        else:
            import boto3

            client = boto3.client("s3")
        return _S3(client, parsed.netloc, prefix)
    if parsed.scheme == "az":
        from azure.storage.blob import BlobServiceClient

        if credentials is None or credentials.connection_string is None:
            raise ExportFailed(
                f"export to {url} needs an AzureBlobStorageCredentials block with a "
                "connection string; name it in event.export.credentials"
            )
        service = BlobServiceClient.from_connection_string(
            credentials.connection_string.get_secret_value()
        )
        return _AzureBlob(service.get_container_client(parsed.netloc), prefix)
    if parsed.scheme == "gs":
        if credentials is not None:
            client = credentials.get_cloud_storage_client()
        else:
            from google.cloud import storage  # type: ignore[attr-defined]

            client = storage.Client()
        return _Gcs(client, parsed.netloc, prefix)
    raise ExportFailed(
        f"cannot export to {url!r}: unknown scheme {parsed.scheme!r}; use file, s3, az or gs"
    )


def export_directory(homes: Path, url: str, credentials: Any = None) -> ExportResult:
    """Copy every file under `homes` to `url`, verify by listing, write the manifest.

    Changes: objects under `url` (overwritten if they exist). Raises `ExportFailed` when
    the destination does not hold exactly the source's files with their sizes.
    """
    files = source_files(homes)
    dest = _call(url, lambda: destination(url, credentials))
    for name in files:
        _call(url, partial(dest.put, name, homes / name))
    found = _call(url, dest.list)
    found.pop(MANIFEST, None)  # a re-run's manifest is not a home file
    verify(url, files, found)
    manifest = {"files": files, "objects": len(files), "bytes": sum(files.values())}
    _call(url, lambda: dest.put_bytes(MANIFEST, json.dumps(manifest, indent=2).encode()))
    return ExportResult(url, len(files), sum(files.values()), files)


def verify(url: str, files: dict[str, int], found: dict[str, int]) -> None:
    """Raise `ExportFailed` unless every source file is at the destination with its size."""
    missing = sorted(set(files) - set(found))
    wrong = sorted(n for n in files if n in found and found[n] != files[n])
    if missing or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)}: {', '.join(missing[:5])}" if missing else "",
                f"size differs for {len(wrong)}: {', '.join(wrong[:5])}" if wrong else "",
            )
            if part
        )
        raise ExportFailed(
            f"export to {url} did not verify ({detail}); the hub was not removed. "
            "Fix the destination and re-run the expiry."
        )


def _call(url: str, fn: Callable[[], Any]) -> Any:
    """Run one SDK call; connection trouble is transient, anything else fails the export."""
    try:
        return fn()
    except ExportFailed:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if _is_transient(exc):
            raise TransientError(f"export to {url}: {name}: {_brief(exc)}") from None
        raise ExportFailed(
            f"export to {url} failed: {name}: {_brief(exc)}; the hub was not removed"
        ) from None


def _is_transient(exc: Exception) -> bool:
    names = {t.__name__ for t in type(exc).__mro__}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ServiceRequestError",
            "ServiceResponseError",
            "ConnectionError",
            "TimeoutError",
        }
    )


def _brief(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else "(no message)"


# --- the Prefect task --------------------------------------------------------------------


async def load_credentials(name: str | None, url: str) -> Any:
    """The block named `name` for the scheme of `url`, or None for the SDK's own chain."""
    if name is None:
        return None
    scheme = urlparse(url).scheme
    try:
        if scheme == "s3":
            from prefect_aws import AwsCredentials

            return await AwsCredentials.aload(name)
        if scheme == "az":
            from prefect_azure import AzureBlobStorageCredentials

            return await AzureBlobStorageCredentials.aload(name)
        if scheme == "gs":
            from prefect_gcp import GcpCredentials

            return await GcpCredentials.aload(name)
    except ValueError:
        raise ExportFailed(
            f"credentials block {name!r} for {url} not found; create it (hubfleet setup or "
            "the Prefect UI) or fix event.export.credentials"
        ) from None
    return None


@task(
    task_run_name="export-homes-{url}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=2, backoff=1.0),
)
async def export_homes(homes: Path, url: str, credentials: str | None = None) -> ExportResult:
    """Copy the hub's home directories to `url` and verify the copy.

    Changes: objects under `url` only; the hub and its homes are untouched.
    """
    block = await load_credentials(credentials, url)
    result = await asyncio.to_thread(export_directory, homes, url, block)
    get_run_logger().info("exported and verified %s", result.summary())
    return result
