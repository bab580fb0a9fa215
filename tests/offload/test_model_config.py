"""Optional config.pbtxt and manifest.json shape batching; served in-process via serve()."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from models.errors import InvalidInput
from models.manifest import Manifest, Postprocessing, Preprocessing, TensorSpec
from offload.client import OffloadClient
from offload.server import serve
from offload.settings import OffloadSettings
from tests.offload.graphs import WIDTH, affine_model

CONFIG = """
name: "configured"
max_batch_size: 8
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 250
}
"""


def write_manifest(version_dir: Path, name: str, max_batch: int) -> None:
    manifest = Manifest(
        name=name,
        version=int(version_dir.name),
        inputs=(TensorSpec(name="x", dtype="FP32", shape=(-1, WIDTH)),),
        outputs=(TensorSpec(name="y", dtype="FP32", shape=(-1, WIDTH)),),
        preprocessing=Preprocessing(window=1, hop=1, channels=("a",), sample_rate_hz=1.0),
        postprocessing=Postprocessing(kind="anomaly", output="y", threshold=1.0),
        max_batch_size=max_batch,
    )
    (version_dir / "manifest.json").write_text(manifest.model_dump_json())


async def test_config_pbtxt_and_manifest_are_honoured(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    affine_model(repo / "configured" / "1" / "model.onnx", 1)
    (repo / "configured" / "config.pbtxt").write_text(CONFIG)
    affine_model(repo / "manifested" / "3" / "model.onnx", 3)
    write_manifest(repo / "manifested" / "3", "manifested", 16)
    affine_model(repo / "plain" / "1" / "model.onnx", 1)
    settings = OffloadSettings(
        repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=-1, max_batch=32
    )
    async with serve(settings) as server, OffloadClient(f"127.0.0.1:{server.port}") as client:
        configured = server.store.get("configured").config_proto
        assert configured.max_batch_size == 8
        assert list(configured.dynamic_batching.preferred_batch_size) == [4, 8]
        assert configured.dynamic_batching.max_queue_delay_microseconds == 250
        assert server.store.get("manifested").config_proto.max_batch_size == 16
        assert server.store.get("plain").config_proto.max_batch_size == 32
        deadline = time.monotonic() + 5
        out = await client.infer("configured", 1, {"x": np.ones((8, WIDTH), np.float32)}, deadline)
        np.testing.assert_allclose(out["y"], 3.0)
        with pytest.raises(InvalidInput, match="9 rows exceeds max_batch_size 8"):
            await client.infer("configured", 1, {"x": np.ones((9, WIDTH), np.float32)}, deadline)
        out = await client.infer(
            "manifested", None, {"x": np.zeros((2, WIDTH), np.float32)}, deadline
        )
        np.testing.assert_allclose(out["y"], 3.0)


async def test_broken_config_marks_model_unavailable_and_serves_the_rest(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    affine_model(repo / "good" / "1" / "model.onnx", 1)
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    settings = OffloadSettings(repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=-1)
    async with serve(settings) as server, OffloadClient(f"127.0.0.1:{server.port}") as client:
        index = {(m["name"], m["state"]): m["reason"] for m in await client.repository_index()}
        assert ("good", "READY") in index
        assert "cannot load" in index[("corrupt", "UNAVAILABLE")]
        assert await client.model_ready("good")


async def test_fixed_shape_graph_is_served_without_batching(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    affine_model(repo / "fixed" / "1" / "model.onnx", 4, batch=2)
    settings = OffloadSettings(repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=-1)
    async with serve(settings) as server, OffloadClient(f"127.0.0.1:{server.port}") as client:
        config = server.store.get("fixed").config_proto
        assert config.max_batch_size == 0
        assert [list(i.dims) for i in config.input] == [[2, WIDTH]]  # dims keep the fixed axis
        deadline = time.monotonic() + 5
        x = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
        outs = await asyncio.gather(
            *(client.infer("fixed", 1, {"x": x + i}, deadline) for i in range(5))
        )
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out["y"], (x + i) * 2 + 4)
        with pytest.raises(InvalidInput, match="expects \\[2, 4\\]"):
            await client.infer("fixed", 1, {"x": np.ones((3, WIDTH), np.float32)}, deadline)
