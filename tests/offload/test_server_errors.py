"""Bad requests get the right gRPC status and a clear message; the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH


@pytest.fixture
def client(server: ServerProcess) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(server.target)
    yield client
    # Whatever the test did, the server still answers a good request correctly.
    x = np.ones((2, WIDTH), np.float32)
    tensor = tg.InferInput("x", [2, WIDTH], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("affine", [tensor]).as_numpy("y"), x * 2 + 2)
    client.close()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The raw stub, for requests tritonclient refuses to build (inconsistent on purpose)."""
    with grpc.insecure_channel(server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, array: np.ndarray, datatype: str) -> tg.InferInput:
    t = tg.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def status_of(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_unknown_model(client: tg.InferenceServerClient, server: ServerProcess) -> None:
    before = server.metric("offload_rejected_requests_total", code="NOT_FOUND")
    with pytest.raises(InferenceServerException) as exc:
        client.infer("no-such-model", [tensor("x", np.ones((1, WIDTH), np.float32), "FP32")])
    assert "NOT_FOUND" in status_of(exc)
    assert "'no-such-model' is not loaded" in exc.value.message()
    assert server.metric("offload_rejected_requests_total", code="NOT_FOUND") == before + 1


def test_unknown_version(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(
            "affine", [tensor("x", np.ones((1, WIDTH), np.float32), "FP32")], model_version="7"
        )
    assert "NOT_FOUND" in status_of(exc)
    assert "version 7 of 'affine' is not ready (ready: [1, 2])" in exc.value.message()


def test_wrong_dtype(client: tg.InferenceServerClient, server: ServerProcess) -> None:
    labels = {"model": "affine", "version": "2", "code": "INVALID_ARGUMENT"}
    before = server.metric("offload_requests_total", **labels)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("affine", [tensor("x", np.ones((1, WIDTH), np.int32), "INT32")])
    assert "INVALID_ARGUMENT" in status_of(exc)
    assert "input 'x' has datatype INT32, affine:2 expects FP32" in exc.value.message()
    assert server.metric("offload_requests_total", **labels) == before + 1  # counted


def test_wrong_shape(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer("affine", [tensor("x", np.ones((2, WIDTH + 1), np.float32), "FP32")])
    assert "INVALID_ARGUMENT" in status_of(exc)
    assert "has shape [2, 5], affine:2 expects [-1, 4]" in exc.value.message()


def test_raw_content_size_mismatch(
    client: tg.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[2, WIDTH])
    request.raw_input_contents.append(np.ones(7, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw content is 28 bytes, but shape [2, 4] of FP32 needs 32 bytes" in exc.value.details()


def test_missing_input(
    client: tg.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(service_pb2.ModelInferRequest(model_name="affine"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'x' for affine:2" in exc.value.details()


def test_unknown_requested_output(
    client: tg.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH])
    request.raw_input_contents.append(np.ones(WIDTH, np.float32).tobytes())
    request.outputs.add(name="logits")
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output 'logits'; affine has ['y']" in exc.value.details()
    request.outputs[0].name = "y"
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == ["y"]


def test_typed_contents_are_accepted(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine", model_version="1")
    t = request.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH])
    t.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = stub.ModelInfer(request, timeout=10)
    y = np.frombuffer(response.raw_output_contents[0], np.float32)
    np.testing.assert_allclose(y, [3.0, 5.0, 7.0, 9.0])


def test_oversized_message(client: tg.InferenceServerClient) -> None:
    big = np.ones((80_000, WIDTH), np.float32)  # 1.28 MB > the server's 1 MiB limit
    with pytest.raises(InferenceServerException) as exc:
        client.infer("affine", [tensor("x", big, "FP32")])
    assert "RESOURCE_EXHAUSTED" in status_of(exc)
    assert "larger than max" in exc.value.message()


async def _slow(client: tga.InferenceServerClient, client_timeout_s: float | None = None) -> object:
    x = np.ones((1, WIDTH), np.float32)
    t = tga.InferInput("x", [1, WIDTH], "FP32")
    t.set_data_from_numpy(x)
    return await client.infer("slow", [t], client_timeout=client_timeout_s)


async def test_expired_deadline_is_dropped_before_compute(
    client: tg.InferenceServerClient, server: ServerProcess
) -> None:
    rows_before = server.metric("offload_batch_size_sum", model="slow")
    expired_before = server.metric("offload_expired_requests_total", model="slow")
    aio = tga.InferenceServerClient(server.target)
    try:
        busy = [asyncio.create_task(_slow(aio)) for _ in range(2)]  # both workers busy
        await asyncio.sleep(0.01)
        with pytest.raises(InferenceServerException) as exc:
            await _slow(aio, client_timeout_s=0.05)
        assert "DEADLINE_EXCEEDED" in str(exc.value.status())
        await asyncio.gather(*busy)
    finally:
        await aio.close()
    # The expired request never reached the model: only the two busy rows were computed.
    assert server.metric("offload_batch_size_sum", model="slow") == rows_before + 2
    assert server.metric("offload_expired_requests_total", model="slow") == expired_before + 1


async def test_full_queue(client: tg.InferenceServerClient, server: ServerProcess) -> None:
    aio = tga.InferenceServerClient(server.target)
    try:
        results = await asyncio.gather(*(_slow(aio) for _ in range(30)), return_exceptions=True)
    finally:
        await aio.close()
    errors = [r for r in results if isinstance(r, Exception)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert errors and served  # max-queue 4 with 2 workers: some must be refused, some served
    for error in errors:
        assert isinstance(error, InferenceServerException)
        assert "RESOURCE_EXHAUSTED" in str(error.status())
        assert "queue of slow:1 is full (4 requests waiting)" in error.message()
    assert server.metric("offload_requests_total", model="slow", code="RESOURCE_EXHAUSTED") == len(
        errors
    )


async def test_http_timeout_parameter_is_a_deadline(
    client: tg.InferenceServerClient, server: ServerProcess
) -> None:
    """Triton's ``timeout`` (µs): a request still queued when it passes gets 504."""
    import aiohttp

    aio = tga.InferenceServerClient(server.target)
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.0] * WIDTH}],
        "parameters": {"timeout": 50_000},
    }
    url = f"http://{server.http_target}/v2/models/slow/infer"
    try:
        busy = [asyncio.create_task(_slow(aio)) for _ in range(2)]  # both workers busy
        await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body) as response:
                assert response.status == 504, await response.text()
                assert "deadline passed" in (await response.json())["error"]
            body["parameters"] = {"timeout": -1}
            async with http.post(url, json=body) as response:
                assert response.status == 400
                error = (await response.json())["error"]
                assert "'timeout' must be a non-negative integer" in error
        await asyncio.gather(*busy)
    finally:
        await aio.close()
