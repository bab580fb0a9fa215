"""The real tritonclient (sync and aio) against a running offload-server process."""

from __future__ import annotations

import asyncio
import queue
import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.offload.conftest import ADMIN, ServerProcess
from tests.offload.graphs import WIDTH, affine_model


def ort_run(model_file: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def make_input(x: np.ndarray) -> tg.InferInput:
    tensor = tg.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


def test_server_and_model_metadata(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "edgecloud-offload"
    assert "model_repository" in meta.extensions
    model = client.get_model_metadata("affine")
    assert list(model.versions) == ["1", "2"]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("y", "FP32", [-1, 4])]
    assert client.is_model_ready("affine", "1") and client.is_model_ready("affine", "2")
    assert not client.is_model_ready("affine", "9")
    assert not client.is_model_ready("nope")


def test_model_config_reflects_graph_and_batching(server: ServerProcess) -> None:
    config = tg.InferenceServerClient(server.target).get_model_config("affine", "2").config
    assert config.name == "affine"
    assert config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [4])]
    assert config.input[0].data_type == tg.model_config_pb2.TYPE_FP32
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 4


@pytest.mark.parametrize("n", [1, 64])
def test_infer_equals_direct_ort(server: ServerProcess, repository: Path, n: int) -> None:
    client = tg.InferenceServerClient(server.target)
    x = rows(n, seed=n)
    result = client.infer("affine", [make_input(x)], model_version="1")
    got = result.as_numpy("y")
    assert got.shape == (n, WIDTH)
    np.testing.assert_array_equal(got, ort_run(repository / "affine" / "1" / "model.onnx", x))


def test_two_versions_side_by_side(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    x = rows(3)
    v1 = client.infer("affine", [make_input(x)], model_version="1")
    v2 = client.infer("affine", [make_input(x)], model_version="2")
    newest = client.infer("affine", [make_input(x)])
    np.testing.assert_allclose(v1.as_numpy("y"), x * 2 + 1)
    np.testing.assert_allclose(v2.as_numpy("y"), x * 2 + 2)
    np.testing.assert_array_equal(newest.as_numpy("y"), v2.as_numpy("y"))
    assert newest.get_response().model_version == "2"


async def test_aio_client_concurrent(server: ServerProcess) -> None:
    client = tga.InferenceServerClient(server.target)
    try:
        assert await client.is_server_ready()
        xs = [rows(i % 3 + 1, seed=i) for i in range(4)]

        async def one(x: np.ndarray, version: str) -> np.ndarray:
            tensor = tga.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = await client.infer("affine", [tensor], model_version=version)
            return result.as_numpy("y")

        outs = await asyncio.gather(*(one(x, str(1 + i % 2)) for i, x in enumerate(xs)))
        for i, (x, y) in enumerate(zip(xs, outs, strict=True)):
            np.testing.assert_allclose(y, x * 2 + 1 + i % 2)
    finally:
        await client.close()


def test_streaming_sync_client(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        xs = {str(i): rows(2, seed=i) for i in range(5)}
        for rid, x in xs.items():
            client.async_stream_infer("affine", [make_input(x)], request_id=rid, model_version="1")
        client.async_stream_infer("nope", [make_input(rows(1))], request_id="bad")
        seen: dict[str, np.ndarray] = {}
        errors = []
        for _ in range(6):
            result, error = results.get(timeout=10)
            if error is not None:
                errors.append(str(error))
            else:
                seen[result.get_response().id] = result.as_numpy("y")
    finally:
        client.stop_stream()
    assert sorted(seen) == sorted(xs)
    for rid, x in xs.items():
        np.testing.assert_allclose(seen[rid], x * 2 + 1)
    assert len(errors) == 1 and "nope" in errors[0] and "NOT_FOUND" in errors[0]


async def test_streaming_aio_client(server: ServerProcess) -> None:
    client = tga.InferenceServerClient(server.target)
    xs = [rows(1, seed=i) for i in range(4)]

    async def requests():  # type: ignore[no-untyped-def]
        for i, x in enumerate(xs):
            tensor = tga.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            yield {"model_name": "affine", "inputs": [tensor], "request_id": str(i)}

    try:
        got = {}
        async for result, error in client.stream_infer(requests()):
            assert error is None
            got[result.get_response().id] = result.as_numpy("y")
            if len(got) == len(xs):
                break
    finally:
        await client.close()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[str(i)], x * 2 + 2)


def test_load_and_unload_through_repository_rpcs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    affine_model(repo / "affine" / "1" / "model.onnx", 1)
    proc = ServerProcess(repo, "--log-level", "WARNING")
    try:
        client = tg.InferenceServerClient(proc.target)
        index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
        assert index == {("affine", "1"): "READY"}
        # A new model and a new version appear on disk; they load only when asked to.
        affine_model(repo / "fresh" / "1" / "model.onnx", 7)
        affine_model(repo / "affine" / "3" / "model.onnx", 3)
        assert not client.is_model_ready("fresh")
        client.load_model("fresh", headers=ADMIN)
        client.load_model("affine", headers=ADMIN)
        x = rows(2)
        np.testing.assert_allclose(client.infer("fresh", [make_input(x)]).as_numpy("y"), x * 2 + 7)
        np.testing.assert_allclose(client.infer("affine", [make_input(x)]).as_numpy("y"), x * 2 + 3)
        client.unload_model("affine", headers=ADMIN)
        assert not client.is_model_ready("affine")
        with pytest.raises(InferenceServerException, match="not loaded"):
            client.infer("affine", [make_input(x)])
        index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
        assert index[("affine", "1")] == "UNAVAILABLE" and index[("fresh", "1")] == "READY"
        shutil.rmtree(repo / "affine" / "3")
        client.load_model("affine", headers=ADMIN)
        assert client.get_model_metadata("affine").versions == ["1"]
        with pytest.raises(InferenceServerException, match="ghost"):
            client.load_model("ghost", headers=ADMIN)
    finally:
        assert proc.terminate() == 0


async def test_sigterm_drains_in_flight_requests(repository: Path) -> None:
    proc = ServerProcess(repository, "--workers", "1", "--log-level", "WARNING")
    client = tga.InferenceServerClient(proc.target)
    try:

        async def slow(i: int) -> np.ndarray:
            t = tga.InferInput("x", [1, WIDTH], "FP32")
            t.set_data_from_numpy(rows(1, seed=i))
            return (await client.infer("slow", [t])).as_numpy("y")

        # One worker: three slow batches run one after another for several 100 ms.
        tasks = [asyncio.create_task(slow(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        proc.proc.send_signal(signal.SIGTERM)
        outs = await asyncio.gather(*tasks)
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, rows(1, seed=i) * 2 + 1, rtol=1e-6)
        rc = await asyncio.to_thread(proc.wait, 20)
        assert rc == 0
        assert "draining" in proc.log
    finally:
        await client.close()
        proc.kill()


def test_grpc_health_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sigterm_drains_in_flight_http_requests(repository: Path) -> None:
    import aiohttp

    proc = ServerProcess(repository, "--workers", "1", "--log-level", "WARNING")
    url = f"http://{proc.http_target}"
    try:
        async with aiohttp.ClientSession() as http:

            async def slow(i: int) -> np.ndarray:
                x = rows(1, seed=i)
                body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH]}]}
                body["inputs"][0]["data"] = x.ravel().tolist()
                async with http.post(f"{url}/v2/models/slow/infer", json=body) as response:
                    assert response.status == 200, await response.text()
                    doc = await response.json()
                return np.asarray(doc["outputs"][0]["data"], np.float32).reshape(1, WIDTH)

            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200
            tasks = [asyncio.create_task(slow(i)) for i in range(3)]
            await asyncio.sleep(0.05)
            proc.proc.send_signal(signal.SIGTERM)  # the listener closes, in-flight calls finish
            outs = await asyncio.gather(*tasks)
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, rows(1, seed=i) * 2 + 1, rtol=1e-6)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.kill()
