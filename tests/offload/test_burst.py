"""2,000 concurrent single-row requests: they are batched, and each caller gets its own rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as tga

from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH

N = 2000


async def test_burst_is_batched_and_rows_stay_with_their_callers(repository: Path) -> None:
    proc = ServerProcess(
        repository, "--max-queue", "4096", "--max-queue-delay-us", "500", "--log-level", "WARNING"
    )
    try:
        xs = np.random.default_rng(42).standard_normal((N, WIDTH)).astype(np.float32)
        client = tga.InferenceServerClient(proc.target)

        async def one(i: int) -> np.ndarray:
            t = tga.InferInput("x", [1, WIDTH], "FP32")
            t.set_data_from_numpy(xs[i : i + 1])
            result = await client.infer("affine", [t], model_version="2", request_id=str(i))
            assert result.get_response().id == str(i)
            return result.as_numpy("y")

        try:
            outs = await asyncio.gather(*(one(i) for i in range(N)))
        finally:
            await client.close()
        session = ort.InferenceSession(str(repository / "affine" / "2" / "model.onnx"))
        expected = session.run(None, {"x": xs})[0]
        got = np.concatenate(outs)
        np.testing.assert_array_equal(got, expected)
        batches = proc.metric("offload_batch_size_count", model="affine", version="2")
        rows = proc.metric("offload_batch_size_sum", model="affine", version="2")
        assert rows == N  # warm-up bypasses the batcher: every computed row is a request row
    finally:
        proc.terminate()
    assert batches >= 1 and rows / batches > 1.0, f"mean batch {rows / batches:.2f}"
