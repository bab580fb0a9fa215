"""The generated config.pbtxt is valid Triton model configuration."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.repository import ModelRepository
from models.triton import config_pbtxt


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_every_builtin_config_parses_with_tritons_proto(built) -> None:
    repo = ModelRepository(built.repository)
    for name in ("motion-edge", "motion-cloud", "vibration-anomaly"):
        manifest = repo.manifest(name, 1)
        config = _parse((built.repository / name / "config.pbtxt").read_text())
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 256
        # Triton's dims omit the batch axis when max_batch_size > 0.
        assert [list(i.dims) for i in config.input] == [list(s.shape[1:]) for s in manifest.inputs]
        assert [o.name for o in config.output] == [s.name for s in manifest.outputs]
        assert config.input[0].data_type == model_config_pb2.TYPE_FP32
        assert config.HasField("dynamic_batching")
        assert 64 in config.dynamic_batching.preferred_batch_size
        assert config.version_policy.HasField("all")


def test_unbatched_model_keeps_full_dims(built) -> None:
    manifest = ModelRepository(built.repository).manifest("motion-edge", 1)
    fixed = manifest.model_copy(
        update={
            "inputs": tuple(s.model_copy(update={"shape": (4, 100, 6)}) for s in manifest.inputs)
        }
    )
    config = _parse(config_pbtxt(fixed))
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [4, 100, 6]
    assert not config.HasField("dynamic_batching")
