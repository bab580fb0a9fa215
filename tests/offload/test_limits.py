"""Bad input never harms another caller: zero-row and mixed-content requests are refused
before batching, and a burst of large malformed requests is bounded in memory."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import psutil
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.errors import Overloaded
from models.recipes import build_all
from tests.offload.conftest import ServerProcess

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def motion_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_all(tmp_path_factory.mktemp("limits"), names=("motion-cloud",)).repository


def request(
    rows: int, *, raw: bytes | None = None, shape: tuple[int, ...] | None = None
) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="motion-cloud")
    r.inputs.add(name="input", datatype="FP32", shape=list(shape or (rows, 100, 6)))
    if raw is None:
        x = np.random.default_rng(rows).standard_normal((rows, 100, 6)).astype(np.float32)
        raw = x.tobytes()
    r.raw_input_contents.append(raw)
    return r


async def test_zero_row_requests_never_fail_valid_callers(motion_repo: Path) -> None:
    # A queue delay makes the batcher merge concurrent calls: the case that used to fail.
    proc = ServerProcess(motion_repo, "--max-queue-delay-us", "2000", "--log-level", "WARNING")
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def call(i: int) -> grpc.StatusCode:
                if i % 50 == 7:  # 2 % of the calls: shape [0, 100, 6]
                    req = request(0, raw=b"")
                elif i % 50 == 31:  # raw bytes plus typed contents in one tensor
                    req = request(1)
                    req.inputs[0].contents.fp32_contents.extend([0.0] * 600)
                else:
                    req = request(1 + i % 4)
                try:
                    response = await stub.ModelInfer(req, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                    detail = exc.details() or ""
                    assert "zero rows" in detail or "both raw_input_contents and typed" in detail
                    return exc.code()
                assert response.outputs[0].shape[0] == 1 + i % 4
                return grpc.StatusCode.OK

            codes = await asyncio.gather(*(call(i) for i in range(1000)))
        assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) == 40
        assert codes.count(grpc.StatusCode.OK) == 960  # every valid caller was answered
    finally:
        assert proc.terminate() == 0


class PeakRss:
    """Samples a process's RSS every 5 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def limited(motion_repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        motion_repo,
        *("--max-message-bytes", str(16 * MIB), "--max-inflight-bytes", str(32 * MIB)),
        "--log-level",
        "WARNING",
    )
    yield proc
    assert proc.terminate() == 0


async def _burst(
    limited: ServerProcess, bad_requests: list[service_pb2.ModelInferRequest]
) -> tuple[float, list[grpc.StatusCode]]:
    """Send ``bad_requests`` at once with 40 valid calls; returns (RSS growth, bad codes)."""
    rss = psutil.Process(limited.proc.pid)
    async with grpc.aio.insecure_channel(
        limited.target, options=[("grpc.max_send_message_length", 128 * MIB)]
    ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):  # warm up the valid path
            await stub.ModelInfer(request(2), timeout=30)
        baseline = rss.memory_info().rss

        async def bad(req: service_pb2.ModelInferRequest) -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.ModelInfer(req, timeout=60)
            return exc.value.code()

        async def good(i: int) -> None:
            response = await stub.ModelInfer(request(1 + i % 3), timeout=60)
            assert response.outputs[0].shape[0] == 1 + i % 3  # valid callers unaffected

        with PeakRss(limited.proc.pid) as peak:
            results = await asyncio.gather(
                *(bad(r) for r in bad_requests), *(good(i) for i in range(40))
            )
    return (peak.peak - baseline) / MIB, [c for c in results if c is not None]


async def test_oversized_burst_costs_nothing(limited: ServerProcess) -> None:
    """The reported attack: 16 concurrent ~60 MB requests (RSS once reached 3.3 GB, more
    than three times the 960 MiB sent). gRPC refuses each at its length prefix, having
    taken off the wire at most its receive window by then. With gRPC's BDP probing that
    window grew by timing (+8 to +255 MiB run to run, the last failing a bound of a
    quarter of what was sent in CI); the server's fixed window (--http2-window-bytes,
    4 MiB) bounds it: +6 to +17 MiB measured with both cores busy."""
    rows = 60 * MIB // 2400
    huge = request(rows, raw=bytes(rows * 2400 - 4))  # malformed: 4 bytes short
    growth, codes = await _burst(limited, [huge] * 16)
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 16
    sent = 16 * huge.ByteSize() / MIB
    print(f"16 x 60 MB ({sent:.0f} MiB): RSS +{growth:.0f} MiB")
    assert growth < 64, (growth, sent)


def test_window_options_fix_the_window_or_leave_bdp_probing() -> None:
    from offload.server import _window_options

    assert _window_options(4 * MIB) == [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 4 * MIB),
    ]
    assert _window_options(0) == []


async def test_large_malformed_burst_is_bounded(limited: ServerProcess) -> None:
    """16 concurrent malformed requests just under the message limit (219 MiB at once)."""
    rows = 6000  # 6000 x 100 x 6 FP32 = 13.7 MiB, under the 16 MiB message limit
    huge = bytes(rows * 600 * 4)
    typed = service_pb2.ModelInferRequest(model_name="motion-cloud")
    t = typed.inputs.add(name="input", datatype="FP32", shape=[rows, 100, 5])  # wrong shape
    t.contents.fp32_contents.extend(np.zeros(rows * 500, np.float32))
    malformed = [
        request(rows, raw=huge[:-4]),  # raw bytes 4 short of the shape
        request(rows, raw=huge, shape=(rows, 100, 5, 1)),  # wrong rank
        request(rows, raw=huge),  # more rows than max_batch_size
        typed,  # typed contents of the wrong shape: refused before conversion
    ]
    sent = sum(r.ByteSize() for r in malformed) * 4 / MIB
    growth, codes = await _burst(limited, malformed * 4)
    assert set(codes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
    print(f"16 malformed, {sent:.0f} MiB at once: RSS +{growth:.0f} MiB ({growth / sent:.1f}x)")
    # gRPC itself holds the received bytes about three times (transport buffers, the bytes
    # handed to the deserializer, the parsed message) until the call ends; nothing is
    # decoded or converted (the old path converted typed contents before any check: ~7x).
    assert growth < 3.5 * sent, (growth, sent)


async def test_admission_refuses_beyond_the_byte_budget(motion_repo: Path) -> None:
    proc = ServerProcess(motion_repo, "--max-inflight-bytes", "4096", "--log-level", "WARNING")
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request(1), timeout=30)  # 2.4 kB: admitted
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.ModelInfer(request(2), timeout=30)  # 4.8 kB: never fits
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-inflight-bytes" in (exc.value.details() or "")
            await stub.ModelInfer(request(1), timeout=30)  # the budget was released
        # HTTP: reserved from Content-Length before the body is read; 429 beyond the budget.
        x = np.zeros((2, 100, 6), np.float32)
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [2, 100, 6],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        url = f"http://{proc.http_target}/v2/models/motion-cloud/infer"
        async with aiohttp.ClientSession() as http:
            headers = {"Inference-Header-Content-Length": str(len(head))}
            async with http.post(url, data=head + x.tobytes(), headers=headers) as response:
                assert response.status == 429
                assert "--max-inflight-bytes" in (await response.json())["error"]
        assert proc.metric("offload_rejected_requests_total", code="RESOURCE_EXHAUSTED") == 2
    finally:
        assert proc.terminate() == 0


def test_reservations_release_once_even_when_dropped() -> None:
    from offload.admission import BytesInFlight

    budget = BytesInFlight(100)
    a = budget.reserve(60)
    with pytest.raises(Overloaded, match="60 bytes of requests in flight"):
        budget.reserve(41)
    a.release()
    a.release()
    assert budget.in_flight == 0
    budget.reserve(100)  # dropped without release (a cancelled call): freed when collected
    assert budget.in_flight == 0


def test_stream_with_one_pending_slot_answers_everything(repository: Path) -> None:
    """--max-stream-pending 1: the server reads one request at a time, loses none."""
    import queue

    import tritonclient.grpc as tg

    proc = ServerProcess(repository, "--max-stream-pending", "1", "--log-level", "WARNING")
    try:
        client = tg.InferenceServerClient(proc.target)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for i in range(50):
                x = np.full((1, 4), i, np.float32)
                t = tg.InferInput("x", [1, 4], "FP32")
                t.set_data_from_numpy(x)
                client.async_stream_infer("affine", [t], request_id=str(i), model_version="1")
            got = {}
            for _ in range(50):
                result, error = answers.get(timeout=20)
                assert error is None, error
                got[result.get_response().id] = result.as_numpy("y")  # type: ignore[attr-defined]
        finally:
            client.stop_stream()
        assert sorted(got, key=int) == [str(i) for i in range(50)]
        for i, y in got.items():
            np.testing.assert_allclose(y, np.full((1, 4), int(i) * 2 + 1, np.float32))
    finally:
        assert proc.terminate() == 0
