"""tasks/export.py against real destinations: a directory, S3 on moto (auth enforced),
Azure blob on Azurite, through the real boto3 and azure-storage-blob clients.

GCS has no emulator here: that path runs the real google-cloud-storage client against
`FakeGcs`, a local HTTP server implementing only the two documented JSON-API calls the
export makes (multipart object upload, object list). It proves our calls and parsing, not
Google's service.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from prefect import flow

from tasks.export import MANIFEST, ExportFailed, export_directory, export_homes, verify


@pytest.fixture
def homes(tmp_path: Path) -> Path:
    """Two users' homes: nested files, an empty file, binary data, and a symlink."""
    root = tmp_path / "homes"
    (root / "alice" / "work").mkdir(parents=True)
    (root / "bob").mkdir()
    (root / "alice" / "notes.txt").write_text("alice's notes\n")
    (root / "alice" / "work" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (root / "bob" / "empty.ipynb").write_bytes(b"")
    (root / "bob" / "escape").symlink_to("/etc/hostname")  # never followed
    return root


EXPECTED = {"alice/notes.txt": 14, "alice/work/data.bin": 10240, "bob/empty.ipynb": 0}


def test_export_to_a_directory_verifies_and_writes_a_manifest(homes: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "local" / "workshop" / "S"
    result = export_directory(homes, f"file://{target}")
    assert result.files == EXPECTED
    assert (result.objects, result.bytes) == (3, 10254)
    assert (target / "alice" / "work" / "data.bin").read_bytes() == bytes(range(256)) * 40
    assert not (target / "bob" / "escape").exists()
    assert json.loads((target / MANIFEST).read_text())["files"] == EXPECTED


def test_verify_fails_on_a_missing_or_short_object() -> None:
    verify("file:///x", EXPECTED, dict(EXPECTED))
    with pytest.raises(ExportFailed, match=r"missing 1: bob/empty.ipynb.*hub was not removed"):
        verify("file:///x", EXPECTED, {k: v for k, v in EXPECTED.items() if k[0] == "a"})
    with pytest.raises(ExportFailed, match=r"size differs for 1: alice/notes.txt"):
        verify("file:///x", EXPECTED, {**EXPECTED, "alice/notes.txt": 3})


@pytest.mark.cloud
def test_export_to_s3_on_moto_through_a_credentials_block(
    homes: Path, moto_server: Any, prefect_server: str
) -> None:
    from prefect_aws import AwsCredentials

    bucket = f"exports-{uuid.uuid4().hex[:8]}"
    moto_server.client("s3").create_bucket(Bucket=bucket)
    AwsCredentials(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
        region_name=moto_server.region,
        aws_client_parameters={"endpoint_url": moto_server.endpoint_url},
    ).save("aws-export-test", overwrite=True)

    @flow
    async def run() -> Any:
        return await export_homes(
            homes, f"s3://{bucket}/events/local/workshop/S", "aws-export-test"
        )

    import asyncio

    result = asyncio.run(run())
    assert result.files == EXPECTED
    listed = moto_server.client("s3").list_objects_v2(Bucket=bucket, Prefix="events/")
    sizes = {o["Key"]: o["Size"] for o in listed["Contents"]}
    assert sizes == {
        **{f"events/local/workshop/S/{k}": v for k, v in EXPECTED.items()},
        f"events/local/workshop/S/{MANIFEST}": sizes[f"events/local/workshop/S/{MANIFEST}"],
    }
    # Wrong keys: moto enforces auth, so the export fails loudly and names no secret.
    bad = AwsCredentials(
        aws_access_key_id="AKIAWRONGWRONGWRONG0",
        aws_secret_access_key="not-the-secret-at-all",
        region_name=moto_server.region,
        aws_client_parameters={"endpoint_url": moto_server.endpoint_url},
    )
    with pytest.raises(
        ExportFailed, match=r"export to s3://.* failed: .*InvalidAccessKeyId"
    ) as info:
        export_directory(homes, f"s3://{bucket}/again", bad)
    assert "not-the-secret-at-all" not in str(info.value)
    # A bucket that does not exist fails, and says which.
    with pytest.raises(ExportFailed, match="NoSuchBucket"):
        export_directory(homes, "s3://no-such-bucket-here/x", _admin(moto_server))


def _admin(moto_server: Any) -> Any:
    from prefect_aws import AwsCredentials

    return AwsCredentials(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
        region_name=moto_server.region,
        aws_client_parameters={"endpoint_url": moto_server.endpoint_url},
    )


@pytest.mark.cloud
def test_export_to_azure_blob_on_azurite(homes: Path, azurite: Any) -> None:
    from azure.storage.blob import BlobServiceClient
    from prefect_azure import AzureBlobStorageCredentials

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"exports-{uuid.uuid4().hex[:8]}"
    service.create_container(container)
    creds = AzureBlobStorageCredentials(connection_string=azurite.connection_string)
    result = export_directory(homes, f"az://{container}/local/workshop/S", creds)
    assert result.files == EXPECTED
    blobs = {b.name: b.size for b in service.get_container_client(container).list_blobs()}
    assert {k: v for k, v in blobs.items() if not k.endswith(MANIFEST)} == {
        f"local/workshop/S/{k}": v for k, v in EXPECTED.items()
    }
    data = service.get_blob_client(container, "local/workshop/S/alice/notes.txt")
    assert data.download_blob().readall() == b"alice's notes\n"
    with pytest.raises(ExportFailed, match=r"ContainerNotFound|ResourceNotFound"):
        export_directory(homes, "az://missing-container/x", creds)


# --- GCS: a local server implementing only the documented calls we make ----------------


class FakeGcs(BaseHTTPRequestHandler):
    """`POST /upload/storage/v1/b/<b>/o?uploadType=multipart` and `GET /storage/v1/b/<b>/o`."""

    objects: dict[tuple[str, str], bytes] = {}
    buckets: set[str] = set()

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        parts = url.path.split("/")  # ['', 'upload', 'storage', 'v1', 'b', bucket, 'o']
        bucket = parts[5]
        if bucket not in self.buckets:
            return self._reply(404, {"error": {"code": 404, "message": "bucket not found"}})
        assert parse_qs(url.query)["uploadType"] == ["multipart"], url.query
        body = self.rfile.read(int(self.headers["Content-Length"]))
        msg = message_from_bytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body,
            policy=HTTP,
        )
        meta_part, data_part = list(msg.iter_parts())  # type: ignore[attr-defined]
        meta = json.loads(meta_part.get_payload(decode=True))
        data = data_part.get_payload(decode=True) or b""
        self.objects[(bucket, meta["name"])] = data
        self._reply(200, {"bucket": bucket, "name": meta["name"], "size": str(len(data))})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        bucket = unquote(url.path.split("/")[4])
        prefix = parse_qs(url.query).get("prefix", [""])[0]
        items = [
            {"bucket": b, "name": n, "size": str(len(d))}
            for (b, n), d in sorted(self.objects.items())
            if b == bucket and n.startswith(prefix)
        ]
        self._reply(200, {"kind": "storage#objects", "items": items})


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[str, str], bytes]]:
    FakeGcs.objects, FakeGcs.buckets = {}, {"exports"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGcs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The client's documented emulator switch: endpoint and anonymous credentials.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    try:
        yield FakeGcs.objects
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_export_to_gcs_through_the_real_client_on_a_fake_server(
    homes: Path, fake_gcs: dict[tuple[str, str], bytes]
) -> None:
    result = export_directory(homes, "gs://exports/local/workshop/S")
    assert result.files == EXPECTED
    assert fake_gcs[("exports", "local/workshop/S/alice/notes.txt")] == b"alice's notes\n"
    assert ("exports", f"local/workshop/S/{MANIFEST}") in fake_gcs
    with pytest.raises(ExportFailed, match="NotFound"):
        export_directory(homes, "gs://other-bucket/x")
