"""Repository control needs an admin: a bearer token or an admin client certificate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from models.errors import ConfigError, PermissionDenied, Unauthenticated
from offload.admin import AdminPolicy
from offload.client import OffloadClient
from offload.tls import TlsFiles
from tests.offload.conftest import ADMIN, ADMIN_TOKEN, ServerProcess
from tests.offload.test_tls import Ca


def test_unauthenticated_unload_is_refused_and_the_model_stays(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    with pytest.raises(InferenceServerException) as exc:
        client.unload_model("affine")
    assert "UNAUTHENTICATED" in str(exc.value.status())
    assert "needs an admin credential" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.unload_model("affine", headers={"authorization": "Bearer not-the-token-at-all"})
    assert "UNAUTHENTICATED" in str(exc.value.status())
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("affine", headers={"authorization": "Basic abc"})
    assert "Bearer <token>" in exc.value.message()
    assert client.is_model_ready("affine", "1") and client.is_model_ready("affine", "2")
    x = np.ones((1, 4), np.float32)
    t = tg.InferInput("x", [1, 4], "FP32")
    t.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("affine", [t]).as_numpy("y"), x * 2 + 2)
    assert server.metric("offload_rejected_requests_total", code="UNAUTHENTICATED") >= 3


def test_without_admin_configuration_control_is_off(repository: Path) -> None:
    proc = ServerProcess(repository, "--log-level", "WARNING", admin_token=None)
    try:
        client = tg.InferenceServerClient(proc.target)
        with pytest.raises(InferenceServerException) as exc:
            client.unload_model("affine", headers=ADMIN)
        assert "PERMISSION_DENIED" in str(exc.value.status())
        assert "repository control is disabled" in exc.value.message()
        assert client.is_model_ready("affine")
    finally:
        assert proc.terminate() == 0


def test_policy_rules(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# ops\n{ADMIN_TOKEN}\n")
    policy = AdminPolicy.from_settings(tokens, "", mutual_tls=False)
    assert policy.authorize(f"Bearer {ADMIN_TOKEN}", None) == "token"
    with pytest.raises(Unauthenticated):
        policy.authorize("Bearer x" * 3, None)
    with pytest.raises(Unauthenticated):
        policy.authorize(None, None)
    with pytest.raises(PermissionDenied, match="'edge-1' may not load"):
        AdminPolicy.from_settings(None, "ops", mutual_tls=True).authorize(None, "edge-1")
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        AdminPolicy.from_settings(None, "ops", mutual_tls=False)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        AdminPolicy.from_settings(short, "", mutual_tls=False)
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        AdminPolicy.from_settings(empty, "", mutual_tls=False)


def test_admin_client_certificate_over_mutual_tls(tmp_path: Path, repository: Path) -> None:
    ca = Ca(tmp_path, "edgecloud-ca")
    server_id = ca.issue("offload-server", server=True)
    agent = ca.issue("edge-agent-1", server=False)
    ops = ca.issue("ops-admin", server=False)
    assert server_id.cert and server_id.key and agent.cert and agent.key and ops.cert and ops.key
    proc = ServerProcess(
        repository,
        *("--tls-cert", str(server_id.cert), "--tls-key", str(server_id.key)),
        *("--tls-ca", str(ca.cert_file), "--admin-subjects", "ops-admin"),
        "--log-level",
        "WARNING",
        admin_token=None,
    )

    def grpc_client(who: object) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(
            proc.target,
            ssl=True,
            root_certificates=str(ca.cert_file),
            private_key=str(who.key),  # type: ignore[attr-defined]
            certificate_chain=str(who.cert),  # type: ignore[attr-defined]
        )

    try:
        with pytest.raises(InferenceServerException) as exc:
            grpc_client(agent).unload_model("affine")
        assert "PERMISSION_DENIED" in str(exc.value.status())
        assert "'edge-agent-1' may not load or unload" in exc.value.message()
        assert grpc_client(agent).is_model_ready("affine", "1")
        grpc_client(ops).unload_model("affine")
        assert not grpc_client(agent).is_model_ready("affine")
        grpc_client(ops).load_model("affine")
        assert grpc_client(agent).is_model_ready("affine")

        # The HTTP port: health is open to probes, everything else needs a client cert.
        ssl_opts = {"ssl_options": {"ca_certs": str(ca.cert_file)}, "insecure": False}
        anonymous = th.InferenceServerClient(proc.http_target, ssl=True, **ssl_opts)
        assert anonymous.is_server_live()
        with pytest.raises(InferenceServerException, match="client certificate"):
            anonymous.get_model_metadata("affine")
        opts = {"ca_certs": str(ca.cert_file), "certfile": str(agent.cert)}
        opts["keyfile"] = str(agent.key)
        as_agent = th.InferenceServerClient(proc.http_target, ssl=True, ssl_options=opts)
        assert as_agent.get_model_metadata("affine")["name"] == "affine"
        with pytest.raises(InferenceServerException, match="may not load or unload"):
            as_agent.unload_model("affine")
        opts = {"ca_certs": str(ca.cert_file), "certfile": str(ops.cert)}
        opts["keyfile"] = str(ops.key)
        th.InferenceServerClient(proc.http_target, ssl=True, ssl_options=opts).load_model("affine")

        # Our own client (the gateway's): mTLS with the admin identity loads a version.
        ops_tls = TlsFiles(ops.cert, ops.key, ca.cert_file)

        async def gateway_load() -> None:
            async with OffloadClient(proc.target, tls=ops_tls) as client:
                await client.load_model("affine", 1)

        asyncio.run(gateway_load())
    finally:
        assert proc.terminate() == 0


def test_caller_is_authenticated_before_the_request_is_read(server: ServerProcess) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.RepositoryModelUnloadRequest(model_name="affine")
    request.parameters["version"].string_param = "not-a-number"
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelUnload(request, timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelUnload(request, timeout=10, metadata=tuple(ADMIN.items()))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must be an integer" in (exc.value.details() or "")
    assert tg.InferenceServerClient(server.target).is_model_ready("affine", "1")
