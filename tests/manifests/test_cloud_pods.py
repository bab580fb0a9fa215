"""The cloud containers, run as real processes with exactly the rendered command and
environment (mount paths moved to a temp dir, addresses to 127.0.0.1): offload-server
serves over mutual TLS with the Secret's file layout and answers its probes;
cloud-gateway serves with its tokens file, data volume and the cloud broker's ACL."""

from __future__ import annotations

import shutil
import ssl
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from models.errors import EdgecloudError
from models.recipes import build_all
from offload.client import OffloadClient
from offload.tls import TlsFiles
from tests.conftest import free_port, wait_for_port
from tests.manifests.brokers import PASSWORDS, start_broker, stop, tls_files
from tests.manifests.pods import http_status, local_pod, start, terminate, wait_http


@pytest.mark.slow
async def test_offload_server_runs_as_deployed_with_mutual_tls(tmp_path: Path) -> None:
    pod = local_pod("cloud", "offload-server", tmp_path / "pod")
    built = build_all(tmp_path / "build", names=("motion-cloud",))
    shutil.copytree(
        built.repository, pod.volume("/var/lib/edgecloud/repository"), dirs_exist_ok=True
    )
    tls = pod.volume("/etc/edgecloud/tls")
    tls_files(tls)  # the offload-server-tls Secret: tls.crt, tls.key, ca.crt
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    pod.env |= {
        "OFFLOAD_HOST": "127.0.0.1",
        "OFFLOAD_GRPC_PORT": str(grpc_port),
        "OFFLOAD_HTTP_PORT": str(http_port),
        "OFFLOAD_METRICS_PORT": str(metrics_port),
        "OFFLOAD_BACKEND": "onnxruntime",  # the manifest's tensorrt needs a GPU
    }
    log = tmp_path / "offload.log"
    proc = start(pod, log)
    try:
        wait_for_port(grpc_port, timeout=30)
        wait_http(proc, f"http://127.0.0.1:{metrics_port}/metrics", log)  # Prometheus
        # The probes: HTTPS without a client certificate (kubelet skips verification).
        probe = ssl.create_default_context()
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                url = f"https://127.0.0.1:{http_port}{path}"
                async with http.get(url, ssl=probe) as response:
                    assert response.status == 200, await response.text()
            # Readiness: the supervisor of OFFLOAD_PROCESSES=auto answers for all workers.
            async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as response:
                assert response.status == 200, await response.text()
        # An edge agent with its edge-grpc-tls files (same CA) gets answers.
        client_tls = TlsFiles(cert=tls / "tls.crt", key=tls / "tls.key", ca=tls / "ca.crt")
        client = OffloadClient(f"127.0.0.1:{grpc_port}", tls=client_tls, max_retries=0)
        await client.start()
        try:
            x = np.random.default_rng(0).normal(size=(2, 100, 6)).astype(np.float32)
            out = await client.infer("motion-cloud", None, {"input": x}, time.monotonic() + 10)
            assert out["probabilities"].shape == (2, 4)
        finally:
            await client.close()
        # Without a client certificate the server refuses: mutual TLS is really on.
        anonymous = OffloadClient(
            f"127.0.0.1:{grpc_port}", tls=TlsFiles(ca=tls / "ca.crt"), max_retries=0
        )
        await anonymous.start()
        try:
            with pytest.raises(EdgecloudError):
                await anonymous.infer("motion-cloud", None, {"input": x}, time.monotonic() + 5)
        finally:
            await anonymous.close()
        assert terminate(proc) == 0, log.read_text()
    finally:
        terminate(proc, grace=5)


@pytest.mark.slow
def test_cloud_gateway_runs_as_deployed(tmp_path: Path) -> None:
    broker = start_broker("cloud", tmp_path / "broker")
    pod = local_pod("cloud", "cloud-gateway", tmp_path / "pod")
    built = build_all(tmp_path / "build", names=("motion-edge",))
    shutil.copy(built.public_key, pod.volume("/etc/edgecloud/trusted-keys"))
    (pod.volume("/etc/edgecloud/tokens") / "tokens").write_text(
        "admin admin-token\nagent agent-token\nviewer viewer-token\n"
    )
    port = free_port()
    pod.env |= {
        "GATEWAY_BROKER": (
            f"mqtt://cloud-gateway:{PASSWORDS['cloud-gateway']}@127.0.0.1:{broker.ports[1883]}"
        ),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GATEWAY_CLOUD": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "gateway.log"
    proc = start(pod, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(proc, f"{url}/healthz", log)
        assert http_status(f"{url}/api/v1/models", token="viewer-token") == 200
        assert http_status(f"{url}/api/v1/models", token="wrong") == 401
        data = pod.volume("/var/lib/edgecloud/gateway")
        assert any(data.iterdir()), "the gateway keeps its state on the data volume"
        assert terminate(proc) == 0, log.read_text()
    finally:
        terminate(proc, grace=5)
        stop(broker)
