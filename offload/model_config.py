"""Per-model serving configuration from the optional ``config.pbtxt`` and ``manifest.json``.

Neither file is required: tensor specs always come from the loaded graph. When present,
Triton's ``config.pbtxt`` (parsed with the real ``model_config_pb2``) or our bundle
manifest supply ``max_batch_size`` and the dynamic batching knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.errors import ConfigError
from models.manifest import Manifest, TensorSpec


@dataclass(frozen=True)
class ServingDefaults:
    """Server-wide batching defaults; a model's own config may lower them."""

    max_batch: int = 64
    max_queue_delay_us: int = 0
    max_queue: int = 4096
    #: Run a batch on the event loop when nothing else runs and the model's measured batch
    #: time is at most this (0: always in the executor). Server-wide: it is a property of
    #: this process's loop, not of a model's configuration.
    inline_max_us: int = 0


def read_config_pbtxt(model_dir: Path) -> model_config_pb2.ModelConfig | None:
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return None
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def read_manifest(version_dir: Path) -> Manifest | None:
    path = version_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def batchable(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> bool:
    """A graph can be batched when every tensor has a dynamic first axis."""
    return all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))


@dataclass(frozen=True)
class ServingConfig:
    """What the batcher and ModelConfig RPC need for one model version."""

    max_batch_size: int
    preferred_sizes: tuple[int, ...]
    max_queue_delay_us: int
    max_queue: int
    inline_max_us: int = 0


def serving_config(
    pbtxt: model_config_pb2.ModelConfig | None,
    manifest: Manifest | None,
    graph_batchable: bool,
    defaults: ServingDefaults,
) -> ServingConfig:
    if not graph_batchable:
        return ServingConfig(0, (), 0, defaults.max_queue, defaults.inline_max_us)
    limit = defaults.max_batch
    if pbtxt is not None and pbtxt.max_batch_size == 0 and pbtxt.ByteSize() > 0:
        limit = 0
    elif pbtxt is not None and pbtxt.max_batch_size > 0:
        limit = min(limit, pbtxt.max_batch_size)
    elif manifest is not None:
        limit = min(limit, manifest.max_batch_size)
    delay = defaults.max_queue_delay_us
    preferred: tuple[int, ...] = ()
    max_queue = defaults.max_queue
    if pbtxt is not None and pbtxt.HasField("dynamic_batching"):
        dyn = pbtxt.dynamic_batching
        preferred = tuple(sorted(p for p in dyn.preferred_batch_size if 0 < p <= limit))
        delay = int(dyn.max_queue_delay_microseconds)
        if dyn.HasField("default_queue_policy") and dyn.default_queue_policy.max_queue_size > 0:
            max_queue = min(max_queue, int(dyn.default_queue_policy.max_queue_size))
    return ServingConfig(limit, preferred, delay, max_queue, defaults.inline_max_us)


def _data_type(dtype: str) -> int:
    return model_config_pb2.DataType.Value(f"TYPE_{dtype}")


def model_config_proto(
    name: str,
    platform: str,
    backend: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    config: ServingConfig,
) -> model_config_pb2.ModelConfig:
    """The Triton ModelConfig this server actually applies (dims exclude the batch axis)."""
    proto = model_config_pb2.ModelConfig(
        name=name, platform=platform, backend=backend, max_batch_size=config.max_batch_size
    )
    skip = 1 if config.max_batch_size > 0 else 0
    for spec in inputs:
        proto.input.add(name=spec.name, data_type=_data_type(spec.dtype), dims=spec.shape[skip:])
    for spec in outputs:
        proto.output.add(name=spec.name, data_type=_data_type(spec.dtype), dims=spec.shape[skip:])
    if config.max_batch_size > 0:
        proto.dynamic_batching.preferred_batch_size.extend(config.preferred_sizes)
        proto.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
        proto.dynamic_batching.default_queue_policy.max_queue_size = config.max_queue
    proto.version_policy.all.SetInParent()
    return proto
