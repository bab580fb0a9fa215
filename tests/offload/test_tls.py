"""Mutual TLS: a client certificate from another CA is refused, the right CA's is served."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from models.errors import Unavailable
from offload.client import OffloadClient
from offload.tls import TlsFiles
from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


class Ca:
    def __init__(self, directory: Path, cn: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = directory / f"{cn}.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.dir / f"{cn}.crt"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return TlsFiles(cert=cert_file, key=_write_key(key, self.dir / f"{cn}.key"), ca=None)


def test_mutual_tls(tmp_path: Path, repository: Path) -> None:
    trusted = Ca(tmp_path, "edgecloud-ca")
    rogue = Ca(tmp_path, "rogue-ca")
    server_id = trusted.issue("offload-server", server=True)
    good = trusted.issue("edge-good", server=False)
    bad = rogue.issue("edge-bad", server=False)
    assert server_id.cert and server_id.key and good.cert and good.key and bad.cert and bad.key
    proc = ServerProcess(
        repository,
        "--tls-cert",
        str(server_id.cert),
        "--tls-key",
        str(server_id.key),
        "--tls-ca",
        str(trusted.cert_file),
        "--log-level",
        "WARNING",
    )
    try:
        x = np.arange(WIDTH, dtype=np.float32).reshape(1, WIDTH)

        async def call(tls: TlsFiles) -> np.ndarray:
            async with OffloadClient(proc.target, tls=tls, max_retries=0) as client:
                out = await client.infer("affine", 1, {"x": x}, time.monotonic() + 5.0)
                return out["y"]

        ok = asyncio.run(call(TlsFiles(good.cert, good.key, trusted.cert_file)))
        np.testing.assert_allclose(ok, x * 2 + 1)
        with pytest.raises(Unavailable):
            asyncio.run(call(TlsFiles(bad.cert, bad.key, trusted.cert_file)))
        with pytest.raises(Unavailable):  # no client certificate at all
            asyncio.run(call(TlsFiles(None, None, trusted.cert_file)))

        # The stock tritonclient with the right identity is served too.
        triton = tg.InferenceServerClient(
            proc.target,
            ssl=True,
            root_certificates=str(trusted.cert_file),
            private_key=str(good.key),
            certificate_chain=str(good.cert),
        )
        assert triton.is_server_ready()
        assert proc.proc.poll() is None
    finally:
        assert proc.terminate() == 0
