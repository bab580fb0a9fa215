"""The gateway's calls to the cloud tier: TLS, mutual TLS with an admin certificate, token."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_gateway.cloud import CloudTier
from offload.tls import TlsFiles
from tests.offload.conftest import ADMIN_TOKEN, ServerProcess
from tests.offload.graphs import affine_model
from tests.offload.test_tls import Ca


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    affine_model(root / "affine" / "1" / "model.onnx", 1)
    return root


async def test_load_over_mutual_tls_with_admin_certificate_or_token(
    tmp_path: Path, repo: Path
) -> None:
    ca = Ca(tmp_path, "edgecloud-ca")
    server_id = ca.issue("offload-server", server=True)
    gateway = ca.issue("cloud-gateway", server=False)
    agent = ca.issue("edge-agent-7", server=False)
    assert server_id.cert and server_id.key
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    proc = ServerProcess(
        repo,
        *("--tls-cert", str(server_id.cert), "--tls-key", str(server_id.key)),
        *("--tls-ca", str(ca.cert_file), "--admin-subjects", "cloud-gateway"),
        "--log-level",
        "WARNING",
    )  # also --admin-token-file (ServerProcess's default token)
    bundle = tmp_path / "unused.bundle"  # no --cloud-repository: nothing is installed
    try:
        affine_model(repo / "affine" / "2" / "model.onnx", 2)
        admin_cert = CloudTier(proc.target, tls=TlsFiles(gateway.cert, gateway.key, ca.cert_file))
        assert await admin_cert.load("affine", 2, bundle) == f"loaded on {proc.target}"

        affine_model(repo / "affine" / "3" / "model.onnx", 3)
        agent_cert = CloudTier(proc.target, tls=TlsFiles(agent.cert, agent.key, ca.cert_file))
        outcome = await agent_cert.load("affine", 3, bundle)
        assert outcome.startswith("failed: permission-denied:"), outcome
        assert "'edge-agent-7' may not load" in outcome
        with_token = CloudTier(
            proc.target,
            tls=TlsFiles(agent.cert, agent.key, ca.cert_file),
            admin_token_file=token_file,
        )
        assert await with_token.load("affine", 3, bundle) == f"loaded on {proc.target}"
        # TLS without a client certificate: the handshake itself is refused (mutual TLS).
        no_cert = CloudTier(proc.target, tls=TlsFiles(ca=ca.cert_file), admin_token_file=token_file)
        assert (await no_cert.load("affine", 3, bundle)).startswith("failed: unavailable")
    finally:
        assert proc.terminate() == 0


async def test_plain_token_and_refusal_without_one(tmp_path: Path, repo: Path) -> None:
    proc = ServerProcess(repo, "--log-level", "WARNING")
    token_file = tmp_path / "token"
    token_file.write_text(f"# cloud tier admin\n{ADMIN_TOKEN}\n")
    try:
        affine_model(repo / "affine" / "2" / "model.onnx", 2)
        anonymous = CloudTier(proc.target)
        outcome = await anonymous.load("affine", 2, tmp_path / "x.bundle")
        assert outcome.startswith("failed: unauthenticated:"), outcome
        assert "needs an admin credential" in outcome
        missing = CloudTier(proc.target, admin_token_file=tmp_path / "nope")
        assert "cannot read --cloud-admin-token-file" in await missing.load(
            "affine", 2, tmp_path / "x.bundle"
        )
        tier = CloudTier(proc.target, admin_token_file=token_file)
        assert await tier.load("affine", 2, tmp_path / "x.bundle") == f"loaded on {proc.target}"
    finally:
        assert proc.terminate() == 0
