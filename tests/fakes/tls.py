"""A throwaway TLS identity for 127.0.0.1, made at test time.

Why: google-genai forces the ``wss`` scheme on whatever ``base_url`` it is given and
always passes an ``ssl=`` context to ``websockets.connect`` (protocols.md C5), so a
fake Gemini Live server has to speak real TLS. A self-signed certificate whose SAN is
``IP:127.0.0.1`` (plus ``DNS:localhost``) is enough; the client side then trusts
exactly that certificate instead of the system store.

Made with the ``cryptography`` package (present as a dependency of the stack); if it
is missing, ``openssl req`` is used instead. The result is cached per process, so the
key is generated once however many fakes a test run starts.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple


class TlsPair(NamedTuple):
    """Server and client halves of the loopback TLS identity."""

    server: ssl.SSLContext
    """Context for ``websockets.asyncio.server.serve(ssl=...)``: presents the cert."""
    client: ssl.SSLContext
    """Context that trusts only that cert (hostname check on, for 127.0.0.1)."""
    ca_path: str
    """PEM of the self-signed cert, for ``SSL_CERT_FILE`` or ``cafile=`` users."""


def _write_with_cryptography(cert_path: Path, key_path: Path) -> bool:
    """Write a self-signed cert/key pair; False when ``cryptography`` is unavailable."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        # Self-signed leaf that is also its own CA: OpenSSL accepts it as a trust anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _write_with_openssl(cert_path: Path, key_path: Path) -> None:
    """Fallback: the ``openssl`` CLI (1.1.1+ for ``-addext``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the cryptography package nor the openssl CLI is available")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key_path), "-out", str(cert_path),
        ],
        check=True,
        capture_output=True,
    )


@lru_cache(maxsize=1)
def loopback_tls() -> TlsPair:
    """The process-wide TLS pair for servers bound to 127.0.0.1 (made on first use)."""
    directory = Path(tempfile.mkdtemp(prefix="fake-tls-"))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if not _write_with_cryptography(cert_path, key_path):
        _write_with_openssl(cert_path, key_path)

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return TlsPair(server=server, client=client, ca_path=str(cert_path))
