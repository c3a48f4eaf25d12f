"""Rotating GCP service-account keys and Azure application secrets.

Neither Google IAM nor Microsoft Entra ID / Graph has an emulator that runs here, so each
test runs a local server (a thread, stopped when the test ends) that implements ONLY the
documented REST calls the adapter makes, with real behaviour:

- GCP: IAM v1 `projects.serviceAccounts.keys` list / create / delete (bearer tokens
  required, each service account managing its own keys) and the OAuth 2.0 token endpoint
  for the JWT-bearer grant, which checks the JWT's RS256 signature against the public key
  of the key named in its `kid`: a deleted key's JWT is refused with `invalid_grant`.
- Azure (HTTPS, self-signed CA made with `cryptography`): the tenant's OpenID
  configuration, the v2.0 token endpoint for the client-credentials grant (a removed
  secret is refused with `invalid_client`), and Graph v1.0 `applications/{id}/addPassword`
  and `removePassword`.

The adapters use the official clients unchanged (google-api-python-client + google-auth;
azure-identity + azure-core), pointed at these servers through the DeployerCredential
block's `api_endpoint` and `token_endpoint`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prefect_azure import AzureContainerInstanceCredentials
from prefect_gcp import GcpCredentials
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from flows.rotate_credentials import RotationsFailed, rotate_credentials
from hubfleet.credentials import CredentialKind
from tasks.azure_ad import AzureClientSecretRotator
from tasks.gcp_iam import GcpServiceAccountKeyRotator
from tasks.rotation import CredentialRefused, Issued

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.cloud]


#: The `aud` Google documents for a service account's JWT, whatever URL it is posted to.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    """Routes to the fake's `handle(method, path, query, headers, body)`."""

    fake: Any

    def log_message(self, format: str, *args: Any) -> None:  # no request lines on stderr
        return None

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        status, payload = self.fake.handle(
            method, url.path, parse_qs(url.query), self.headers, body
        )
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


@contextmanager
def serve(fake: Any, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Run `fake` on a loopback port in a thread; stop it (and the thread) on exit."""
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="fake-cloud", daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


def _error(status: int, message: str, code: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": status, "message": message, "status": code}}


# --- GCP: IAM keys + the OAuth token endpoint ------------------------------------------


@dataclass
class FakeGoogle:
    """IAM v1 serviceAccounts.keys (list, create, delete) and the JWT-bearer token grant.

    Every IAM call needs a bearer token issued here; a service account may manage only its
    own keys. Access tokens stay valid for their hour, like Google's (deleting a key stops
    new tokens; the adapter always exchanges a fresh JWT, so it never relies on old ones)."""

    project: str = "hubfleet-test"
    base: str = ""
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # key id -> email, pubkey
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> email
    created: set[str] = field(default_factory=set)  # secret values made (hygiene scan)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"

    def new_key(self, email: str) -> dict[str, Any]:
        """A key file, as keys.create returns it in privateKeyData."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key_id = secrets.token_hex(20)
        with self.lock:
            self.keys[key_id] = {
                "email": email,
                "public": private.public_key(),
                "validAfterTime": _now(),
            }
        self.created.add(pem)
        self.created.add(pem.splitlines()[5])  # also a bare line of the key, as in a file
        return {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(uuid.uuid4().int)[:21],
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
        }

    def key_ids(self, email: str) -> set[str]:
        with self.lock:
            return {k for k, v in self.keys.items() if v["email"] == email}

    def _resource(self, key_id: str) -> dict[str, Any]:
        key = self.keys[key_id]
        return {
            "name": f"projects/{self.project}/serviceAccounts/{key['email']}/keys/{key_id}",
            "validAfterTime": key["validAfterTime"],
            "validBeforeTime": "9999-12-31T23:59:59Z",
            "keyAlgorithm": "KEY_ALG_RSA_2048",
            "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": "USER_MANAGED",
        }

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        if method == "POST" and path == "/token":
            return self._token(parse_qs(body.decode()))
        parts = unquote(path).strip("/").split("/")
        # v1/projects/{project}/serviceAccounts/{email}/keys[/{key id}]
        if len(parts) not in (6, 7) or parts[:2] != ["v1", "projects"] or parts[5] != "keys":
            return _error(404, f"no such method {path}", "NOT_FOUND")
        auth = headers.get("Authorization", "")
        with self.lock:
            caller = self.tokens.get(auth.removeprefix("Bearer "))
        if caller is None:
            return _error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
        email = parts[4]
        if caller != email or parts[2] not in (self.project, "-"):
            return _error(403, "Permission denied on service account.", "PERMISSION_DENIED")
        if method == "GET" and len(parts) == 6:
            assert query.get("keyTypes") == ["USER_MANAGED"]
            with self.lock:
                return 200, {
                    "keys": [self._resource(k) for k in self.keys if self.keys[k]["email"] == email]
                }
        if method == "POST" and len(parts) == 6:
            request = json.loads(body or b"{}")
            assert request.get("privateKeyType", "TYPE_GOOGLE_CREDENTIALS_FILE") == (
                "TYPE_GOOGLE_CREDENTIALS_FILE"
            )
            key_file = self.new_key(email)
            with self.lock:
                made = self._resource(key_file["private_key_id"])
            data = base64.b64encode(json.dumps(key_file).encode()).decode()
            self.created.add(data)
            return 200, {
                **made,
                "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
                "privateKeyData": data,
            }
        if method == "DELETE" and len(parts) == 7:
            with self.lock:
                if self.keys.get(parts[6], {}).get("email") != email:
                    return _error(
                        404, f"Service account key {parts[6]} does not exist.", "NOT_FOUND"
                    )
                del self.keys[parts[6]]
            return 200, {}
        return _error(405, "method not allowed", "INVALID_ARGUMENT")

    def _token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        bad = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Invalid grant_type",
            }
        assertion = form.get("assertion", [""])[0]
        try:
            kid = jwt.get_unverified_header(assertion).get("kid")
        except jwt.PyJWTError:
            return 400, bad
        with self.lock:
            key = self.keys.get(kid or "")
        if key is None:  # deleted (or never existed): Google refuses the signature
            return 400, bad
        try:
            claims = jwt.decode(
                assertion,
                key["public"],
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError:
            return 400, bad
        if claims["iss"] != key["email"]:
            return 400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"}
        token = f"ya29.{secrets.token_urlsafe(48)}"
        with self.lock:
            self.tokens[token] = key["email"]
        self.created.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}


def google_token(fake: FakeGoogle, key_file: dict[str, Any]) -> httpx.Response:
    """The token exchange any Google client makes, done by hand: a JWT signed with the key."""
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": key_file["client_email"],
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": GOOGLE_TOKEN_AUDIENCE,
            "iat": now,
            "exp": now + 3600,
        },
        key_file["private_key"],
        algorithm="RS256",
        headers={"kid": key_file["private_key_id"]},
    )
    return httpx.post(
        fake.token_url,
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
    )


@pytest.fixture
async def gcp(secret_ledger: set[str]) -> AsyncIterator[dict[str, Any]]:
    """A fake Google with one deployer service account and key, registered as gcp-central's
    deployer credential (a GcpCredentials block and a DeployerCredential record)."""
    fake = FakeGoogle()
    with serve(fake) as base:
        fake.base = base
        email = f"deployer-{uuid.uuid4().hex[:6]}@{fake.project}.iam.gserviceaccount.com"
        key_file = fake.new_key(email)
        await GcpCredentials(service_account_info=key_file, project=fake.project).asave(
            "gcp-central-deployer", overwrite=True
        )
        await DeployerCredential(
            cluster="gcp-central",
            kind=CredentialKind.gcp_service_account_key,
            principal=email,
            credential_id=key_file["private_key_id"],
            secret_block="gcp-central-deployer",
            created_at=datetime.now(UTC) - timedelta(days=120),
            consumed_by=["terraform:gcp-central", "gke:gcp-central"],
            api_endpoint=base,
            token_endpoint=fake.token_url,
        ).asave("gcp-central-deployer", overwrite=True)
        try:
            yield {"fake": fake, "email": email, "key": key_file}
        finally:
            secret_ledger.update(fake.created)


async def test_gcp_key_rotation_deletes_stale_and_old_keys(gcp: dict[str, Any]) -> None:
    """Against the fake IAM + token endpoint (no GCP emulator exists; see module docstring)."""
    fake: FakeGoogle = gcp["fake"]
    old = gcp["key"]
    # A key left by an interrupted rotation: not the stored one, so it is deleted first.
    stale = fake.new_key(gcp["email"])

    result = await rotate_credentials(scope="cluster:gcp-central", operator="dave")
    [done] = result.rotated
    assert done.old == old["private_key_id"] and done.new != old["private_key_id"]
    assert done.verified_as == gcp["email"]
    assert f"deleted stale service-account key {stale['private_key_id']}" in done.cleaned

    stored = await GcpCredentials.aload("gcp-central-deployer")
    assert stored.service_account_info is not None
    new = stored.service_account_info.get_secret_value()
    assert new["private_key_id"] == done.new and stored.project == fake.project
    # The new key gets a token; the old (deleted) key's JWT is refused.
    assert google_token(fake, new).status_code == 200
    refused = google_token(fake, old)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert google_token(fake, stale).status_code == 400
    # The account has only the new key, and the block holds only it.
    assert fake.key_ids(gcp["email"]) == {done.new}
    assert old["private_key"] not in stored.model_dump_json()
    assert old["private_key"] not in json.dumps(new)
    record = await DeployerCredential.for_cluster("gcp-central")
    assert record.credential_id == done.new and record.last_rotated is not None


async def test_gcp_failed_verification_deletes_the_new_key(
    gcp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection at the adapter: the token check of the new key is made to fail;
    the fake then shows the new key deleted and the old one still exchanging for tokens."""
    old = gcp["key"]
    real_verify = GcpServiceAccountKeyRotator.verify

    async def refuse_new(self: GcpServiceAccountKeyRotator, credential: Issued) -> str:
        if credential.ident != old["private_key_id"]:
            raise CredentialRefused(f"injected fault: refusing {credential.ident}")
        return await real_verify(self, credential)

    monkeypatch.setattr(GcpServiceAccountKeyRotator, "verify", refuse_new)
    with pytest.raises(RotationsFailed, match="deleted the new credential") as failed:
        await rotate_credentials(scope="cluster:gcp-central")
    assert f"checked: the old credential {old['private_key_id']} works" in str(failed.value)
    fake: FakeGoogle = gcp["fake"]
    assert fake.key_ids(gcp["email"]) == {old["private_key_id"]}
    assert google_token(fake, old).status_code == 200
    stored = await GcpCredentials.aload("gcp-central-deployer")
    assert stored.service_account_info is not None
    assert stored.service_account_info.get_secret_value() == old
    record = await DeployerCredential.for_cluster("gcp-central")
    assert record.credential_id == old["private_key_id"] and record.last_rotated is None


# --- Azure: Entra ID token endpoint + Graph addPassword / removePassword ----------------


def tls_for_loopback(ca_file: Path) -> ssl.SSLContext:
    """A throwaway CA (its certificate written to `ca_file` for the clients) and a server
    certificate for 127.0.0.1 signed by it; the private keys never touch the disk for long."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubfleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as private:
        chain = Path(private) / "server.pem"
        chain.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        context.load_cert_chain(chain)
    return context


@dataclass
class FakeEntra:
    """Entra ID's v2.0 OpenID configuration and client-credentials token endpoint, and Graph
    v1.0 `applications/{id}/addPassword` and `removePassword`.

    An application may change only its own passwords (it owns itself); a token request
    succeeds only with a secret the application currently has."""

    tenant: str = field(default_factory=lambda: str(uuid.uuid4()))
    base: str = ""
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # object id -> app
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> object id
    created: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_app(self) -> tuple[str, str]:
        object_id, app_id = str(uuid.uuid4()), str(uuid.uuid4())
        with self.lock:
            self.apps[object_id] = {"appId": app_id, "passwords": {}}
        return object_id, app_id

    def add_password(self, object_id: str, name: str | None = None) -> dict[str, Any]:
        secret = f"{secrets.token_urlsafe(3)[:3]}8Q~{secrets.token_urlsafe(30)}"
        key_id = str(uuid.uuid4())
        with self.lock:
            self.apps[object_id]["passwords"][key_id] = secret
        self.created.add(secret)
        start = datetime.now(UTC)
        return {
            "customKeyIdentifier": None,
            "displayName": name,
            "endDateTime": (start + timedelta(days=730)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "hint": secret[:3],
            "keyId": key_id,
            "secretText": secret,
            "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def key_ids(self, object_id: str) -> set[str]:
        with self.lock:
            return set(self.apps[object_id]["passwords"])

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        tenant = f"/{self.tenant}"
        if method == "GET" and path == f"{tenant}/v2.0/.well-known/openid-configuration":
            return 200, {
                "issuer": f"{self.base}{tenant}/v2.0",
                "authorization_endpoint": f"{self.base}{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{self.base}{tenant}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            }
        if method == "POST" and path == f"{tenant}/oauth2/v2.0/token":
            return self._token(parse_qs(body.decode()))
        parts = path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[:2] != ["v1.0", "applications"]:
            return 404, {"error": {"code": "Request_ResourceNotFound", "message": path}}
        auth = headers.get("Authorization", "")
        with self.lock:
            caller = self.tokens.get(auth.removeprefix("Bearer "))
        if caller is None:
            return 401, {
                "error": {
                    "code": "InvalidAuthenticationToken",
                    "message": "Access token validation failure.",
                }
            }
        object_id, action = parts[2], parts[3]
        if caller != object_id or object_id not in self.apps:
            return 403, {"error": {"code": "Authorization_RequestDenied", "message": "denied"}}
        request = json.loads(body or b"{}")
        if action == "addPassword":
            made = self.add_password(object_id, request["passwordCredential"].get("displayName"))
            return 200, made
        if action == "removePassword":
            with self.lock:
                if self.apps[object_id]["passwords"].pop(request["keyId"], None) is None:
                    return 404, {"error": {"code": "Request_ResourceNotFound", "message": "no"}}
            return 204, None
        return 400, {"error": {"code": "BadRequest", "message": f"unknown action {action}"}}

    def _token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"}
        client_id = form.get("client_id", [""])[0]
        secret = form.get("client_secret", [""])[0]
        with self.lock:
            found = [(oid, app) for oid, app in self.apps.items() if app["appId"] == client_id]
            valid = bool(found) and any(
                secrets.compare_digest(secret, s) for s in found[0][1]["passwords"].values()
            )
        if not found:
            return 400, {
                "error": "unauthorized_client",
                "error_description": f"AADSTS700016: Application {client_id} was not found.",
                "error_codes": [700016],
            }
        if not valid:
            return 401, {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            }
        token = f"eyJ0eXAi.{secrets.token_urlsafe(48)}"
        with self.lock:
            self.tokens[token] = found[0][0]
        self.created.add(token)
        return 200, {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }


async def azure_block() -> AzureContainerInstanceCredentials:
    loaded = await AzureContainerInstanceCredentials.aload("azure-europe-deployer")
    assert isinstance(loaded, AzureContainerInstanceCredentials)
    return loaded


def entra_token(fake: FakeEntra, ca: Path, app_id: str, secret: str) -> httpx.Response:
    """A client-credentials token request, made by hand (not through the adapter)."""
    return httpx.post(
        f"{fake.base}/{fake.tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": app_id,
            "client_secret": secret,
            "scope": "https://graph.microsoft.com/.default",
        },
        verify=ssl.create_default_context(cafile=str(ca)),
    )


@pytest.fixture
async def azure(
    secret_ledger: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Any]]:
    """A fake Entra ID + Graph over HTTPS with one deployer application and secret,
    registered as azure-europe's deployer credential."""
    monkeypatch.setattr(AzureClientSecretRotator, "propagation_seconds", 0.0)
    fake = FakeEntra()
    ca = tmp_path / "ca.pem"
    with serve(fake, tls_for_loopback(ca)) as base:
        fake.base = base
        object_id, app_id = fake.new_app()
        password = fake.add_password(object_id, "bootstrap")
        await AzureContainerInstanceCredentials(
            client_id=app_id,
            tenant_id=fake.tenant,
            client_secret=SecretStr(password["secretText"]),
            credential_kwargs={"connection_verify": str(ca)},
        ).asave("azure-europe-deployer", overwrite=True)
        await DeployerCredential(
            cluster="azure-europe",
            kind=CredentialKind.azure_client_secret,
            principal=object_id,
            credential_id=password["keyId"],
            secret_block="azure-europe-deployer",
            created_at=datetime.now(UTC) - timedelta(days=120),
            consumed_by=["terraform:azure-europe", "aks:azure-europe"],
            api_endpoint=base,
            token_endpoint=base,
            tenant_id=fake.tenant,
        ).asave("azure-europe-deployer", overwrite=True)
        try:
            yield {
                "fake": fake,
                "ca": ca,
                "object_id": object_id,
                "app_id": app_id,
                "key_id": password["keyId"],
                "secret": password["secretText"],
            }
        finally:
            secret_ledger.update(fake.created)


async def test_azure_secret_rotation(azure: dict[str, Any]) -> None:
    """Against the fake Entra ID + Graph over HTTPS (no emulator exists; see the module
    docstring): addPassword with the old secret, removePassword with the new one."""
    fake: FakeEntra = azure["fake"]
    result = await rotate_credentials(scope="cluster:azure-europe", operator="dave")
    [done] = result.rotated
    assert done.old == azure["key_id"] and done.new != azure["key_id"]
    assert azure["app_id"] in done.verified_as

    stored = await azure_block()
    assert stored.client_secret is not None
    new_secret = stored.client_secret.get_secret_value()
    assert new_secret != azure["secret"]
    # The new secret gets a token; the removed one is refused.
    assert entra_token(fake, azure["ca"], azure["app_id"], new_secret).status_code == 200
    refused = entra_token(fake, azure["ca"], azure["app_id"], azure["secret"])
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    # The app has only the new password, and the block holds only it.
    assert fake.key_ids(azure["object_id"]) == {done.new}
    dumped = stored.model_dump_json(context={"include_secrets": True})
    assert new_secret in dumped and azure["secret"] not in dumped
    record = await DeployerCredential.for_cluster("azure-europe")
    assert record.credential_id == done.new and record.last_rotated is not None


async def test_azure_failed_verification_removes_the_new_secret(
    azure: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection at the adapter: the token check of the new secret is made to fail;
    the fake then shows the new password removed and the old one still getting tokens."""
    real_verify = AzureClientSecretRotator.verify

    async def refuse_new(self: AzureClientSecretRotator, credential: Issued) -> str:
        if credential.ident != azure["key_id"]:
            raise CredentialRefused(f"injected fault: refusing {credential.ident}")
        return await real_verify(self, credential)

    monkeypatch.setattr(AzureClientSecretRotator, "verify", refuse_new)
    with pytest.raises(RotationsFailed, match="deleted the new credential") as failed:
        await rotate_credentials(scope="cluster:azure-europe")
    assert f"checked: the old credential {azure['key_id']} works" in str(failed.value)
    fake: FakeEntra = azure["fake"]
    assert fake.key_ids(azure["object_id"]) == {azure["key_id"]}
    assert entra_token(fake, azure["ca"], azure["app_id"], azure["secret"]).status_code == 200
    stored = await azure_block()
    assert stored.client_secret is not None
    assert stored.client_secret.get_secret_value() == azure["secret"]
    record = await DeployerCredential.for_cluster("azure-europe")
    assert record.credential_id == azure["key_id"] and record.last_rotated is None
