"""The tls level against a real TLS server on loopback with certificates of known expiry.

A hub's real domain cannot resolve here, so the probe function is called with the
loopback address and port; the verdict logic is the one check_hub_health uses.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubfleet.health import judge_tls
from tasks import probes
from tasks.retry import TransientError


def self_signed(directory: Path, days: float) -> tuple[Path, Path, dt.datetime]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub.hubfleet.test")])
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(days=days)).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / f"{days}.crt", directory / f"{days}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem, not_after


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[object]:
    """Start TLS servers on demand: serve(days) -> (port, not_after); all closed at the end."""
    listeners: list[socket.socket] = []

    def serve(days: float) -> tuple[int, dt.datetime]:
        crt, key, not_after = self_signed(tmp_path, days)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        sock = socket.create_server(("127.0.0.1", 0))
        listeners.append(sock)

        def accept() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
                except (OSError, ssl.SSLError):
                    pass

        threading.Thread(target=accept, daemon=True).start()
        return sock.getsockname()[1], not_after

    yield serve
    for sock in listeners:
        sock.close()


@pytest.mark.parametrize(
    ("days", "status", "says"),
    [
        (90, "ok", "certificate expires"),
        (15, "warn", "expires in 15 days (< 21)"),
        (3, "FAIL", "renew it now"),
        (-2, "FAIL", "certificate expired 2 days ago"),
    ],
)
def test_days_until_expiry_from_a_real_certificate(
    tls_server: object, days: float, status: str, says: str
) -> None:
    port, not_after = tls_server(days)  # type: ignore[operator]
    seen = probes.certificate_not_after("127.0.0.1", port)
    assert seen == not_after
    result = judge_tls(seen, dt.datetime.now(dt.UTC))
    assert result.status == status
    assert says in (result.reason or result.detail), result


def test_nothing_listening_is_a_transient_tls_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientError, match=rf"TLS 127.0.0.1:{port}"):
        probes.certificate_not_after("127.0.0.1", port, timeout=2)
