"""One served model version: its backend, batcher, metrics and pre-built descriptions."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from models.errors import InvalidInput
from models.serving import Served
from offload.batcher import BatchConfig, DynamicBatcher
from offload.codec import TensorIn
from offload.metrics import ModelMetrics
from offload.model_config import ServingConfig, model_config_proto

_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


class LoadedModel:
    """One ready model version: backend, batcher, metrics and its pre-built descriptions."""

    def __init__(
        self,
        name: str,
        version: int,
        served: Served,
        config: ServingConfig,
        executor: Executor,
        metrics: ModelMetrics,
        instances: int,
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.served = served  # retired once the batcher has drained (models.serving)
        self.backend = backend = served.backend
        self.config = config
        self.metrics = metrics
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self.output_names = tuple(spec.name for spec in self.outputs)
        self._checks = tuple((s.name, s.numpy_dtype, s.dtype, s.shape) for s in self.inputs)
        self.platform = _PLATFORMS.get(backend.kind, backend.kind)
        self.config_proto = model_config_proto(
            name, self.platform, backend.kind, self.inputs, self.outputs, config
        )
        self.batcher = DynamicBatcher(
            backend.infer,
            BatchConfig(
                max_batch_size=config.max_batch_size,
                max_queue_delay_s=config.max_queue_delay_us / 1e6,
                preferred_sizes=config.preferred_sizes,
                max_queue=config.max_queue,
                instances=instances,
                inline_max_s=config.inline_max_us / 1e6,
            ),
            executor,
            label=f"{name}:{version}",
            observer=metrics,
        )

    def check(self, tensors: Sequence[TensorIn]) -> int:
        """Validate the inputs' names, datatypes and shapes (before decoding anything);
        returns the request's row count. Empty tensors are refused here: a zero-row request
        must never reach a batch it shares with other callers."""
        by_name: dict[str, TensorIn] = {}
        names = [c[0] for c in self._checks]
        for t in tensors:
            if t.name in by_name:
                raise InvalidInput(f"input {t.name!r} given twice")
            if t.name not in names:
                raise InvalidInput(f"unknown input {t.name!r}; {self.name} takes {names}")
            by_name[t.name] = t
        rows = -1
        for name, _dtype, dtype_name, shape in self._checks:
            given = by_name.get(name)
            if given is None:
                raise InvalidInput(
                    f"missing input {name!r} for {self.name}:{self.version}; it takes {names}"
                )
            if given.datatype != dtype_name:
                raise InvalidInput(
                    f"input {name!r} has datatype {given.datatype}, "
                    f"{self.name}:{self.version} expects {dtype_name}"
                )
            got = given.shape
            if any(d < 0 for d in got):
                raise InvalidInput(f"input {name!r}: negative dimension in shape {list(got)}")
            if len(got) != len(shape) or any(w != -1 and w != g for w, g in zip(shape, got)):  # noqa: B905
                raise InvalidInput(
                    f"input {name!r} has shape {list(got)}, {self.name}:{self.version} expects "
                    f"{list(shape)} (-1 = any)"
                )
            if 0 in got:
                raise InvalidInput(
                    f"input {name!r} has shape {list(got)}: an empty tensor (zero rows) "
                    "is not a request"
                )
            if self.config.max_batch_size:
                if rows >= 0 and got[0] != rows:
                    raise InvalidInput("inputs disagree on the batch size (first dimension)")
                rows = got[0]
        return max(rows, 1)
